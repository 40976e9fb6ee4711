"""``make demo``: the bot in a scripted conversation against the local stand-ins."""
