"""Converters that turn the files of a fetched package into one data file in a format recipes read (by name, for
``FetchedData.convert``): deterministic, so the result's SHA-256 can be checked."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import PurePosixPath

import yaml

from dropbp.core.errors import ConfigError

#: ``convert(members)``: member path -> bytes, to the bytes of one data file.
Converter = Callable[[dict[str, bytes]], bytes]


def chatterbot_chat(members: dict[str, bytes]) -> bytes:
    """ChatterBot corpus YAML files (``conversations``: lists of turns) as chat records: turns alternate user and
    assistant, a trailing user turn is dropped (every record ends with an answer), exact repeats of a conversation
    are kept once; each record keeps its topic (the file's name). Files in name order."""
    records, seen = [], set()
    for name in sorted(members):
        data = yaml.safe_load(members[name].decode("utf-8"))
        for turns in (data or {}).get("conversations") or []:
            turns = [str(turn).strip() for turn in turns]
            turns = turns[:len(turns) - len(turns) % 2]
            if not turns or tuple(turns) in seen:
                continue
            seen.add(tuple(turns))
            records.append({"topic": PurePosixPath(name).stem,
                            "messages": [{"role": "user" if i % 2 == 0 else "assistant", "content": turn}
                                         for i, turn in enumerate(turns)]})
    if not records:
        raise ConfigError("the ChatterBot corpus files hold no conversation of two or more turns.")
    return (json.dumps(records, ensure_ascii=False, indent=1) + "\n").encode("utf-8")


CONVERTERS: dict[str, Converter] = {"chatterbot-chat": chatterbot_chat}
