"""Local stand-ins for Slack, Teams and Discord webhooks that enforce each service's contract.

Each receiver is an aiohttp server on 127.0.0.1 with any number of hooks (``/hook/<name>``). It
checks a body the way the real service documents it, answers with the real status and error
text, rate-limits per hook with a token bucket, and records what it accepted, so a test can
assert both "Slack would have taken this" and "the relay paced itself".

Contracts (what the services document; sources per class):

- :class:`SlackLike` -- 200 ``ok``; 400 ``invalid_payload`` for a body that is not a JSON object
  or whose blocks break Block Kit's rules, 400 ``no_text`` without ``text``/``blocks``/
  ``attachments``; about one message per second per hook (short bursts allowed), beyond that
  429 with ``Retry-After`` in whole seconds. Sources: api.slack.com/changelog/2016-05-17-changes-
  to-errors-for-incoming-webhooks; docs.slack.dev/messaging/sending-messages-using-incoming-
  webhooks; api.slack.com/docs/rate-limits ("Posting messages: 1 per second, short bursts >1
  allowed"); docs.slack.dev/reference/block-kit/blocks (section 3,000 / 10 fields of 2,000,
  header 150, context 10 elements, 50 blocks).
- :class:`TeamsLike` -- a Workflows "when a Teams webhook request is received" trigger: 202 for
  a message whose attachments are Adaptive Cards (``application/vnd.microsoft.card.adaptive``,
  content ``{"type": "AdaptiveCard", "version", "body": [...]}``), 400 otherwise (Workflows
  take Adaptive Cards only), 413 past about 28 KB. Source: learn.microsoft.com/microsoftteams/
  platform/webhooks-and-connectors/how-to/connectors-using (known issues, limits).
- :class:`DiscordLike` -- execute webhook: 204; 400 ``{"code": 50006}`` for an empty message,
  400 ``{"code": 50035, "message": "Invalid Form Body"}`` past the embed limits (content 2,000;
  10 embeds; title 256, description 4,096, 25 fields of 256/1,024, footer 2,048, author 256,
  6,000 in total); 429 with ``{"message", "retry_after" (seconds, float), "global": false}`` and
  ``Retry-After`` past its bucket (5 requests per 2 s per webhook by default; Discord says to
  read the ``X-RateLimit-*`` headers, which are sent). Sources: docs.discord.com/developers/
  resources/message (embed limits), docs.discord.com/developers/topics/rate-limits.

Time comes from ``clock`` (default :func:`time.monotonic`), so a test can move it instead of
sleeping. Self-contained on purpose: it does not share code with the relay's own servers.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

HOST = "127.0.0.1"


@dataclass(slots=True)
class Accepted:
    """One request a receiver took: the hook it came to, the parsed body, and its headers."""

    hook: str
    body: Any
    headers: dict[str, str]


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float


@dataclass(slots=True)
class _Verdict:
    status: int
    body: str | dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


class _ChatReceiver:
    """The shared server: routing, body parsing, the per-hook token bucket, the records."""

    def __init__(
        self,
        *,
        requests: float | None,
        per: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        max_bytes: int = 1024 * 1024,
    ) -> None:
        self._rate = requests / per if requests else None
        self._burst = max(burst, 1)
        self._clock = clock
        self._max_bytes = max_bytes
        self._buckets: dict[str, _Bucket] = {}
        self._runner: web.AppRunner | None = None
        self._changed = asyncio.Event()
        self.base_url = ""
        self.accepted: list[Accepted] = []
        self.rejected: list[tuple[str, int, str]] = []  # (hook, status, error text)

    async def start(self) -> str:
        """Listen on an ephemeral port of 127.0.0.1; returns the base URL."""
        app = web.Application(client_max_size=self._max_bytes * 4)
        app.router.add_post("/hook/{name}", self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, HOST, 0).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.base_url = f"http://{HOST}:{runner.addresses[0][1]}"
        return self.base_url

    async def stop(self) -> None:
        """Stop listening and drop open connections. Safe to call twice."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    def url(self, hook: str = "default") -> str:
        """The webhook URL of ``hook`` (each hook has its own rate bucket)."""
        return f"{self.base_url}/hook/{hook}"

    def bodies(self, hook: str | None = None) -> list[Any]:
        """The accepted bodies, optionally of one hook only, in arrival order."""
        return [a.body for a in self.accepted if hook is None or a.hook == hook]

    async def wait_accepted(self, n: int, timeout: float = 120.0) -> None:  # noqa: ASYNC109
        """Wait until at least ``n`` requests were accepted (else TimeoutError)."""
        async with asyncio.timeout(timeout):
            while len(self.accepted) < n:
                self._changed.clear()
                await self._changed.wait()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        hook = request.match_info["name"]
        raw = await request.read()
        verdict = self._throttle(hook)
        if verdict is None:
            verdict = self._check_size(raw) or self._judge(raw)
        if verdict.status < 300:
            body = json.loads(raw)
            self.accepted.append(Accepted(hook, body, dict(request.headers)))
        else:
            error = verdict.body if isinstance(verdict.body, str) else json.dumps(verdict.body)
            self.rejected.append((hook, verdict.status, error))
        self._changed.set()
        if isinstance(verdict.body, dict):
            return web.json_response(verdict.body, status=verdict.status, headers=verdict.headers)
        if verdict.status == 204:
            return web.Response(status=204, headers=verdict.headers)
        return web.Response(text=verdict.body, status=verdict.status, headers=verdict.headers)

    def _throttle(self, hook: str) -> _Verdict | None:
        if self._rate is None:
            return None
        now = self._clock()
        bucket = self._buckets.setdefault(hook, _Bucket(float(self._burst), now))
        bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.stamp) * self._rate)
        bucket.stamp = now
        if bucket.tokens >= 1 - 1e-9:  # float drift must not refuse a request on time
            bucket.tokens -= 1
            return None
        return self._limited((1 - bucket.tokens) / self._rate)

    def _check_size(self, raw: bytes) -> _Verdict | None:
        if len(raw) > self._max_bytes:
            return _Verdict(413, "request_too_large")
        return None

    def _limited(self, wait: float) -> _Verdict:
        return _Verdict(429, "rate_limited", {"Retry-After": str(max(math.ceil(wait), 1))})

    def _judge(self, raw: bytes) -> _Verdict:
        raise NotImplementedError


def _parse_object(raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _text_ok(obj: object, limit: int, kinds: tuple[str, ...] = ("plain_text", "mrkdwn")) -> bool:
    return (
        isinstance(obj, dict)
        and obj.get("type") in kinds
        and isinstance(obj.get("text"), str)
        and 0 < len(obj["text"]) <= limit
    )


def _slack_block_ok(block: object) -> bool:
    if not isinstance(block, dict):
        return False
    kind = block.get("type")
    if kind == "section":
        fields = block.get("fields")
        if "text" not in block and not fields:
            return False
        if "text" in block and not _text_ok(block["text"], 3000):
            return False
        return fields is None or (
            isinstance(fields, list)
            and 0 < len(fields) <= 10
            and all(_text_ok(f, 2000) for f in fields)
        )
    if kind == "header":
        return _text_ok(block.get("text"), 150, ("plain_text",))
    if kind == "context":
        elements = block.get("elements")
        return (
            isinstance(elements, list)
            and 0 < len(elements) <= 10
            and all(_text_ok(e, 3000) or _image_ok(e) for e in elements)
        )
    return kind == "divider"


def _image_ok(element: object) -> bool:
    return isinstance(element, dict) and element.get("type") == "image"


class SlackLike(_ChatReceiver):
    """A Slack incoming webhook: see the module docstring for the contract."""

    def __init__(
        self, *, requests: float = 1, per: float = 1.0, burst: int = 1, **kwargs: Any
    ) -> None:
        super().__init__(requests=requests, per=per, burst=burst, **kwargs)

    def _judge(self, raw: bytes) -> _Verdict:
        message = _parse_object(raw)
        if message is None:
            return _Verdict(400, "invalid_payload")
        text, blocks = message.get("text"), message.get("blocks")
        if text is not None and not isinstance(text, str):
            return _Verdict(400, "invalid_payload")
        if blocks is not None and not (
            isinstance(blocks, list)
            and len(blocks) <= 50
            and all(_slack_block_ok(b) for b in blocks)
        ):
            return _Verdict(400, "invalid_payload")
        if not text and not blocks and not message.get("attachments"):
            return _Verdict(400, "no_text")
        return _Verdict(200, "ok")


class TeamsLike(_ChatReceiver):
    """A Teams Workflows webhook trigger: see the module docstring for the contract."""

    CONTENT_TYPE = "application/vnd.microsoft.card.adaptive"

    def __init__(self, *, requests: float | None = None, per: float = 1.0, **kwargs: Any) -> None:
        kwargs.setdefault("max_bytes", 28 * 1024)
        super().__init__(requests=requests, per=per, burst=1, **kwargs)

    def _judge(self, raw: bytes) -> _Verdict:
        message = _parse_object(raw)
        if message is None:
            return _Verdict(400, {"error": {"code": "InvalidRequestContent"}})
        attachments = message.get("attachments")
        if message.get("type") != "message" or not isinstance(attachments, list) or not attachments:
            return _Verdict(400, {"error": {"code": "NoAdaptiveCard"}})
        for attachment in attachments:
            card = attachment.get("content") if isinstance(attachment, dict) else None
            if not (
                isinstance(attachment, dict)
                and attachment.get("contentType") == self.CONTENT_TYPE
                and isinstance(card, dict)
                and card.get("type") == "AdaptiveCard"
                and isinstance(card.get("version"), str)
                and isinstance(card.get("body"), list)
                and all(isinstance(el, dict) and "type" in el for el in card["body"])
            ):
                return _Verdict(400, {"error": {"code": "InvalidAdaptiveCard"}})
        return _Verdict(202, "")


_DISCORD_FIELD_LIMITS = {"title": 256, "description": 4096}


def _discord_problems(message: dict[str, Any]) -> dict[str, Any]:
    problems: dict[str, Any] = {}
    content = message.get("content")
    if content is not None and (not isinstance(content, str) or len(content) > 2000):
        problems["content"] = "Must be 2000 or fewer in length."
    embeds = message.get("embeds", [])
    if not isinstance(embeds, list) or len(embeds) > 10:
        problems["embeds"] = "Must be 10 or fewer in length."
        return problems
    total = 0
    for i, embed in enumerate(embeds):
        if not isinstance(embed, dict):
            problems[f"embeds.{i}"] = "Not an object."
            continue
        for key, limit in _DISCORD_FIELD_LIMITS.items():
            value = embed.get(key, "")
            if not isinstance(value, str) or len(value) > limit:
                problems[f"embeds.{i}.{key}"] = f"Must be {limit} or fewer in length."
            total += len(value) if isinstance(value, str) else 0
        fields = embed.get("fields", [])
        if not isinstance(fields, list) or len(fields) > 25:
            problems[f"embeds.{i}.fields"] = "Must be 25 or fewer in length."
            fields = []
        for j, item in enumerate(fields):
            name = item.get("name") if isinstance(item, dict) else None
            value = item.get("value") if isinstance(item, dict) else None
            if not (isinstance(name, str) and 0 < len(name) <= 256):
                problems[f"embeds.{i}.fields.{j}.name"] = "Must be between 1 and 256 in length."
            if not (isinstance(value, str) and 0 < len(value) <= 1024):
                problems[f"embeds.{i}.fields.{j}.value"] = "Must be between 1 and 1024 in length."
            total += sum(len(x) for x in (name, value) if isinstance(x, str))
        for key, limit in (("footer", 2048), ("author", 256)):
            part = embed.get(key, {})
            text = (
                part.get("text" if key == "footer" else "name", "") if isinstance(part, dict) else 0
            )
            if not isinstance(text, str) or len(text) > limit:
                problems[f"embeds.{i}.{key}"] = f"Must be {limit} or fewer in length."
            total += len(text) if isinstance(text, str) else 0
    if total > 6000:
        problems["embeds"] = "Embed size exceeds maximum size of 6000"
    return problems


class DiscordLike(_ChatReceiver):
    """A Discord execute-webhook endpoint: see the module docstring for the contract."""

    def __init__(
        self, *, requests: float = 5, per: float = 2.0, burst: int = 5, **kwargs: Any
    ) -> None:
        super().__init__(requests=requests, per=per, burst=burst, **kwargs)
        self._limit = burst

    def _judge(self, raw: bytes) -> _Verdict:
        message = _parse_object(raw)
        if message is None:
            return _Verdict(
                400, {"code": 50109, "message": "The request body contains invalid JSON."}
            )
        if not message.get("content") and not message.get("embeds"):
            return _Verdict(400, {"code": 50006, "message": "Cannot send an empty message"})
        problems = _discord_problems(message)
        if problems:
            return _Verdict(
                400, {"code": 50035, "message": "Invalid Form Body", "errors": problems}
            )
        return _Verdict(204, "", {"X-RateLimit-Limit": str(self._limit)})

    def _limited(self, wait: float) -> _Verdict:
        body = {
            "message": "You are being rate limited.",
            "retry_after": round(wait, 3),
            "global": False,
        }
        headers = {
            "Retry-After": str(max(math.ceil(wait), 1)),
            "X-RateLimit-Limit": str(self._limit),
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset-After": f"{wait:.3f}",
            "X-RateLimit-Scope": "shared",
        }
        return _Verdict(429, body, headers)
