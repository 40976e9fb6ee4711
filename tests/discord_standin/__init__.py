"""A local stand-in for Discord (REST API v10, gateway, CDN) for end-to-end tests.

One aiohttp server on a loopback port serves the REST API under ``/api/v10``, the gateway
websocket under ``/gateway`` (resume: ``/gateway/resume``) and signed attachment URLs under
``/attachments/...`` and ``/ephemeral-attachments/...``. It runs in the test's event loop; the
bot under test may run in the same process or as a subprocess pointed at it::

    DISCORD_API_URL=standin.api_url          # discord.http.Route.BASE
    DISCORD_GATEWAY_URL=standin.gateway_url  # DiscordWebSocket.DEFAULT_GATEWAY

Building a world (before the bot connects; later changes are dispatched as events)::

    async with DiscordStandIn(token="bot-token", message_content_allowed=True) as standin:
        guild = standin.add_guild("Test Server")            # bot + an admin ``guild.owner``
        media = guild.add_text_channel("media")
        forum = guild.add_forum_channel("showcase")
        post = guild.add_thread(forum, "first post")
        alice = guild.add_member("alice")                     # permissions=MEMBER
        mod = guild.add_member("mod", permissions=MODERATOR)  # MANAGE_MESSAGES
        admin = guild.add_member("root", permissions=ADMIN)   # ADMINISTRATOR, MANAGE_GUILD
        media.set_permissions(alice, deny=Permission.ATTACH_FILES)   # channel overwrite
        guild.set_bot_permissions(BOT_DEFAULT & ~Permission.SEND_MESSAGES)

Driving a conversation (each call returns once the event reached the bot's socket)::

    await standin.wait_until_ready()
    await standin.wait_for_commands("imgur")
    msg = await standin.post_message(media, alice, "look", attachments=[
        Attachment("cat.png", png_bytes),                     # or a path for large files
        Attachment("big.mp4", Path("/tmp/big.mp4"), spoiler=True),
    ])
    handle = await standin.invoke_slash("imgur", alice, media, {"file": Attachment(...)})
    await handle.wait_done()
    handle.deferred, handle.ephemeral, handle.thinking, handle.response_content
    handle.followups                  # [Message, ...] with .content, .flags, .ephemeral
    handle.visible_messages()         # .channel (everyone) / .invoker_only
    handle.errors                     # e.g. [ApiErrorRecord(404, 10062, "Unknown interaction")]
    menu = await standin.invoke_message_command("Rehost on Imgur", alice, msg)
    choices = await standin.invoke_autocomplete("imgur", alice, media, {"query": "ca"}, "query")
    await standin.invoke_user_command("Uploads", alice, target=mod, channel=media)
    await standin.use_component(bot_message, alice, "confirm")       # buttons, selects
    await standin.submit_modal(handle, {"Reason": "spam"})           # custom_id or label
    await standin.edit_message(msg, "new text")                      # MESSAGE_UPDATE
    await standin.delete_message(msg)     # MESSAGE_DELETE; its CDN links now answer 404
    await standin.bulk_delete([m1, m2])   # MESSAGE_DELETE_BULK

Discord's rules the stand-in enforces: exact ``application/json`` responses; 401 for a wrong
token; unknown routes 404 ``{"message": "404: Not Found", "code": 0}``; 403 50013 when the bot
lacks SEND_MESSAGES / ATTACH_FILES / MANAGE_MESSAGES (50001 without VIEW_CHANNEL); 413 40005
for files over the guild's upload limit; 50006 for empty messages; 50035 form errors. The
first interaction response must come within ``interaction_deadline`` (3 s) of the dispatch,
else 404 10062; a second one gets 400 40060; followups and edits work for 15 minutes
(then 401 50027); after a deferral the first followup replaces the "thinking" message and
keeps the deferral's visibility. Callbacks with ``with_response`` get the ``interaction``
callback object. Gateway: hello, identify (4004 bad token, 4014 for privileged intents that
are not allowed, 4013 invalid intents), heartbeat acks, READY with ``resume_gateway_url``,
GUILD_CREATE per guild (all members with GUILD_MEMBERS, else only the bot; ``member_count``
is the real count), numbered events, RESUME with replay then RESUMED (op 9 for an ended
session). Without the MESSAGE_CONTENT intent, messages arrive with empty content, embeds,
attachments and components, except DMs, the bot's own messages and messages mentioning it
(REST follows ``message_content_allowed``). CDN links carry ``ex``/``is``/``hm``; a bad
signature, an expired link (stand-in clock) or a deleted message gives 404 "This content is
no longer available."; every fetch of a message signs fresh links.

Faults and inspection::

    await standin.disconnect(4000)               # resumable; resumable=False ends the session
    await standin.wait_for_resume()
    standin.hold_gateway(); standin.release_gateway()   # an outage: no HELLO meanwhile
    await standin.send_reconnect()               # opcode 7
    standin.inject_rate_limit("POST /channels/{channel_id}/messages", retry_after=0.2)
    standin.inject_error("POST /channels/{channel_id}/messages", 500, count=2)
    standin.advance_clock(3.5)                   # late interaction answers, expired links
    standin.requests                             # RecordedRequest: method, path, route, json,
                                                 # files (name, size, data), status, response
    await standin.wait_for_request(lambda r: r.route == "POST /channels/{channel_id}/messages")
    standin.channel_messages(media)              # what the bot posted there (deleted flagged)
    await standin.wait_for_bot_message(media, lambda m: "imgur.com" in m.content)
    standin.commands, standin.guild_commands(guild), standin.identify_payload
    standin.connections, standin.session, standin.interactions
    standin.internal_errors                      # stand-in bugs (answered 503): assert empty

Wrong use by a test (unknown option, a user who may not post, a command never synced) raises
:class:`StandInUsageError` instead of sending Discord something it would never send.
"""

from .interactions import (
    ApiErrorRecord,
    InteractionHandle,
    StandInUsageError,
    VisibleMessages,
)
from .permissions import (
    ADMIN,
    ALL_PERMISSIONS,
    BOT_DEFAULT,
    MEMBER,
    MODERATOR,
    Permission,
)
from .rest import RecordedFile, RecordedRequest
from .server import DiscordStandIn
from .world import (
    Attachment,
    Channel,
    ChannelType,
    Guild,
    Member,
    Message,
    Role,
    StoredAttachment,
    User,
)

__all__ = [
    "ADMIN",
    "ALL_PERMISSIONS",
    "BOT_DEFAULT",
    "MEMBER",
    "MODERATOR",
    "ApiErrorRecord",
    "Attachment",
    "Channel",
    "ChannelType",
    "DiscordStandIn",
    "Guild",
    "InteractionHandle",
    "Member",
    "Message",
    "Permission",
    "RecordedFile",
    "RecordedRequest",
    "Role",
    "StandInUsageError",
    "StoredAttachment",
    "User",
    "VisibleMessages",
]
