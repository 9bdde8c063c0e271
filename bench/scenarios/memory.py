"""Scenario 6: Redis bytes per cached exam (``MEMORY USAGE``) vs the JSON body size.

Ours stores a hash ``<prefix>v:@view:exam:1:questions`` = {d: b"h" + JSON head (ETag, headers) +
"\\n" + body, t: tags, g: tag versions} plus one small tag-version key per tag
(``<prefix>t:exam:1``, shared by everything cached about exam 1); the seed
stores the JSON string; dogpile a pickled ``CachedValue`` (when installed).
"""
from __future__ import annotations

from ..env import ORIGIN, PREFIX

KEYS = (
    ("ours", "ours", "/api/exams/1/questions", f"{PREFIX}v:@view:exam:1:questions{ORIGIN}"),
    ("seed", "peers", "/seed/exams/1/questions", "seed:exam:1:questions"),
    ("dogpile", "peers", "/dogpile/exams/1/questions", "dogpile:exam:1:questions"),
    ("raw", "peers", "/raw/exams/1/questions", "raw:exam:1:questions"),
)


def run(env, quick: bool = False) -> dict:
    ours = env.serve("ours", name="ours-mem")
    peers = env.serve("peers", name="peers-mem")
    r = env.redis()
    out = {"keys": {}}
    try:
        body_len = None
        for name, app, path, key in KEYS:
            client = (ours if app == "ours" else peers).client()
            status, _, body = client.request("GET", path)
            client.close()
            if status == 404:  # dogpile.cache not installed
                continue
            assert status == 200, (name, status)
            body_len = body_len or len(body)
            usage = r.memory_usage(key, samples=0)
            out["keys"][name] = {"key": key, "memory_usage": usage,
                                 "stored_value_bytes": _stored_len(r, key),
                                 "overhead_vs_body": usage / len(body) if usage else None}
        out["tag_key"] = {"key": f"{PREFIX}t:exam:1",
                          "memory_usage": r.memory_usage(f"{PREFIX}t:exam:1", samples=0)}
        out["json_body_bytes"] = body_len
    finally:
        ours.stop()
        peers.stop()
    return out


def _stored_len(r, key: str) -> int:
    if r.type(key) == b"hash":
        return sum(len(v) for v in r.hgetall(key).values())
    return r.strlen(key)
