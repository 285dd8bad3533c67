"""Issue 11: a standing corpus of hostile inputs, run through the real command line.

Each case builds its input (a checkpoint folder, a GGUF file, a request file, options, a ledger or
a workspace) in its own temporary folder, runs ``edit-auditor`` in-process through
:func:`auditor.cli.main`, and expects:

* the exit code: 2 for bad input, 1 for a ledger that fails ``verify``;
* for exit 2, exactly one line on stderr, ``edit-auditor: error: ...``, containing a given phrase;
* no traceback;
* nothing lost: every file the case made, the shared workspace and the base checkpoint are
  byte-for-byte (or, for the 540 MB base, size-and-mtime) as they were, and the shared ledger
  still verifies.

Almost every input fails before a model is loaded, so the corpus runs in seconds. A few cases run
again as real subprocesses of the installed ``edit-auditor`` script.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
from safetensors.torch import save_file

from auditor.cli import main
from auditor.record.ledger import Ledger

# ---------------------------------------------------------------- the lab: what cases build on

RECORD = {"prompt": "{} is located in the country of", "subject": "The Eiffel Tower",
          "target_new": "Italy", "target_true": "France"}


@dataclass
class Lab:
    tmp: Path  # the case's own folder
    demo_config: dict  # the demo checkpoint's real config.json
    base: Path  # the demo checkpoint folder (the shared workspace's base)
    ws: Path  # the shared workspace (real, on the demo model)
    gguf: Path  # the demo's real GGUF file

    def file(self, name: str, data: str | bytes) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
        return path

    def checkpoint(self, config: str | bytes | dict | None = "demo", *, weights: bool = True, **changes) -> Path:
        """A folder with a config.json (the demo's, changed by ``changes``) and a small real
        safetensors file."""
        folder = self.tmp / "ckpt"
        folder.mkdir(exist_ok=True)
        if config == "demo":
            config = {**self.demo_config, **changes}
        if config is not None:
            text = config if isinstance(config, (str, bytes)) else json.dumps(config)
            self.file("ckpt/config.json", text)
        if weights:
            save_file({"model.embed_tokens.weight": torch.zeros(4, 8)}, str(folder / "model.safetensors"))
        return folder

    def requests(self, data: str | bytes | list | dict, name: str = "requests.json") -> Path:
        return self.file(name, data if isinstance(data, (str, bytes)) else json.dumps(data))

    def ledger(self, n: int = 3, *, deltas: bool = False, base: str = "demo") -> Path:
        """A workspace folder holding a real ledger of ``n`` entries (no model needed); with
        ``deltas`` each is an applied edit with a real rank-one delta file."""
        from auditor.engine.deltas import Delta

        folder = self.tmp / "ledger-ws"
        with Ledger.create(folder / "ledger.db", {"base_fingerprint": "sha256:" + "ab" * 32, "dtype": "float32",
                                                  "base_source": base}) as led:
            for i in range(n):
                g = torch.Generator().manual_seed(i)
                delta = Delta("model.layers.4.mlp.down_proj.weight", False, torch.randn(8, generator=g),
                              torch.randn(16, generator=g)) if deltas else None
                led.append({"status": "applied" if deltas else "dry-run", "subject": f"Landmark {i}",
                            "target_new": "Italy", "param": delta.param if delta else None}, delta=delta)
            if base != "demo":
                led.set_setting("base_path", base)
        return folder


def tamper(db: Path, *sql: str, params: tuple = ()) -> None:
    conn = sqlite3.connect(db)
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE '%append_only%'"):
        conn.execute(f"DROP TRIGGER {name}")
    for statement in sql:
        conn.execute(statement, params if "?" in statement else ())
    conn.commit()
    conn.close()


def info(path: Path | str) -> list[str]:
    return ["info", str(path), "--device", "cpu"]


def edit(lab: Lab, requests: Path, *extra: str) -> list[str]:
    return ["edit", "demo", "--device", "cpu", "--requests", str(requests), *extra]


def edit_opts(lab: Lab, *extra: str) -> list[str]:
    return edit(lab, lab.requests([RECORD]), *extra)


def export(lab: Lab, out: Path | str, *extra: str) -> list[str]:
    return ["export", "--workspace", str(lab.ws), "--out", str(out), "--device", "cpu", *extra]


def verify(folder: Path, *extra: str) -> list[str]:
    return ["ledger", "verify", "--workspace", str(folder), *extra]


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def gguf_header(version: int, n_tensors: int, n_kv: int, tail: bytes = b"") -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv) + tail


def fifo(lab: Lab) -> Path:
    path = lab.tmp / "requests.fifo"
    os.mkfifo(path)
    return path


def tampered_ledger(lab: Lab, sql: str) -> Path:
    folder = lab.ledger(3)
    tamper(folder / "ledger.db", sql)
    return folder


def deleted_head(lab: Lab) -> Path:
    return tampered_ledger(lab, "DELETE FROM entries WHERE id = 3")


def swapped_delta_ledger(lab: Lab) -> Path:
    """An entry whose JSON was rewritten (target changed) without re-hashing."""
    return tampered_ledger(lab, "UPDATE entries SET target_new = 'Spain' WHERE id = 2")


def foreign_sqlite(lab: Lab) -> Path:
    (lab.tmp / "ws").mkdir()
    conn = sqlite3.connect(lab.tmp / "ws" / "ledger.db")
    conn.execute("CREATE TABLE entries (id INTEGER PRIMARY KEY, note TEXT)")
    conn.commit()
    conn.close()
    return lab.tmp / "ws"


def future_ledger(lab: Lab) -> Path:
    folder = lab.ledger(1)
    conn = sqlite3.connect(folder / "ledger.db")
    conn.execute("INSERT INTO _sqlite_migrations (migration_set, name, applied_at) "
                 "VALUES ('edit_auditor_ledger', 'm999_from_the_future', '2030-01-01')")
    conn.commit()
    conn.close()
    return folder


def moved_head_file(lab: Lab) -> Path:
    folder = lab.ledger(2)
    other = lab.tmp / "other"
    other.mkdir()
    with Ledger.create(other / "ledger.db", {"base_fingerprint": "sha256:" + "cd" * 32, "dtype": "float32"}):
        pass
    (folder / "ledger.head").write_bytes((other / "ledger.head").read_bytes())
    return folder


def delta_file(folder: Path) -> Path:
    return sorted((folder / "deltas").glob("*.safetensors"))[0]


def missing_delta(lab: Lab) -> Path:
    folder = lab.ledger(2, deltas=True)
    delta_file(folder).unlink()
    return folder


def corrupt_delta(lab: Lab) -> Path:
    folder = lab.ledger(2, deltas=True)
    path = delta_file(folder)
    path.write_bytes(path.read_bytes()[:-9])
    return folder


def workspace_on(lab: Lab, base: Path | str) -> list[str]:
    """``replay`` of a workspace whose base checkpoint is ``base`` (not the one it recorded)."""
    return ["replay", "--workspace", str(lab.ledger(1, base=str(base))), "--device", "cpu"]


def non_export_folder(lab: Lab) -> Path:
    folder = lab.tmp / "precious"
    lab.file("precious/thesis.txt", "four years of work\n")
    return folder


def fake_export_with_link(lab: Lab) -> Path:
    link = lab.tmp / "link-to-workspace"
    link.symlink_to(lab.ws, target_is_directory=True)
    return link


# ---------------------------------------------------------------- the corpus

Build = Callable[[Lab], list[str]]
CASES: list[tuple[str, Build, int, str]] = [
    # ---- checkpoint folders
    ("ckpt-config-null", lambda l: info(l.checkpoint("null")), 2, "must hold a JSON object, not null"),
    ("ckpt-config-list", lambda l: info(l.checkpoint("[1, 2]")), 2, "not a list"),
    ("ckpt-config-string", lambda l: info(l.checkpoint('"llama"')), 2, "not a string"),
    ("ckpt-config-number", lambda l: info(l.checkpoint("42")), 2, "not a number"),
    ("ckpt-config-broken-json", lambda l: info(l.checkpoint('{"model_type": "llama",')), 2, "not valid JSON"),
    ("ckpt-config-not-utf8", lambda l: info(l.checkpoint(b'{"model_type": "\xff\xfe"}')), 2, "not valid JSON"),
    ("ckpt-config-2mb", lambda l: info(l.checkpoint('{"pad": "' + "x" * (2 << 20) + '"}')), 2, "at most"),
    ("ckpt-config-deep", lambda l: info(l.checkpoint('{"a": ' + nested(100_000) + "}")), 2, "nested too deeply"),
    ("ckpt-layers-1e9", lambda l: info(l.checkpoint(num_hidden_layers=10**9)), 2, "num_hidden_layers = 1000000000 is outside"),
    ("ckpt-layers-string", lambda l: info(l.checkpoint(num_hidden_layers="30")), 2, "num_hidden_layers must be an integer"),
    ("ckpt-layers-bool", lambda l: info(l.checkpoint(num_hidden_layers=True)), 2, "must be an integer, not true"),
    ("ckpt-layers-negative", lambda l: info(l.checkpoint(num_hidden_layers=-1)), 2, "is outside"),
    ("ckpt-layers-zero", lambda l: info(l.checkpoint(num_hidden_layers=0)), 2, "is outside"),
    ("ckpt-hidden-float", lambda l: info(l.checkpoint(hidden_size=576.5)), 2, "hidden_size must be an integer"),
    ("ckpt-vocab-1e12", lambda l: info(l.checkpoint(vocab_size=10**12)), 2, "vocab_size"),
    ("ckpt-model-type-list", lambda l: info(l.checkpoint(model_type=["llama"])), 2, "model_type must be a string"),
    ("ckpt-model-type-bert", lambda l: info(l.checkpoint(model_type="bert")), 2, "bert"),
    ("ckpt-eps-string", lambda l: info(l.checkpoint(rms_norm_eps="tiny")), 2, "rms_norm_eps must be a finite"),
    ("ckpt-eps-nan", lambda l: info(l.checkpoint(json.dumps(l.demo_config)[:-1] + ', "rope_theta": NaN}')),
     2, "rope_theta must be a finite"),
    ("ckpt-tie-string", lambda l: info(l.checkpoint(tie_word_embeddings="yes")), 2, "must be true or false"),
    ("ckpt-heads-indivisible", lambda l: info(l.checkpoint(num_attention_heads=7)), 2, "not divisible"),
    ("ckpt-bigger-than-weights", lambda l: info(l.checkpoint()), 2, "but the weight files hold"),
    ("ckpt-no-config", lambda l: info(l.checkpoint(None)), 2, "no config.json"),
    ("ckpt-no-weights", lambda l: info(l.checkpoint(weights=False)), 2, "no *.safetensors"),
    ("ckpt-pickle-only", lambda l: info((l.checkpoint(weights=False), l.file("ckpt/pytorch_model.bin", b"\x80\x02}q."))[0]),
     2, "pickle"),
    ("ckpt-safetensors-empty", lambda l: info((l.checkpoint(weights=False), l.file("ckpt/model.safetensors", b""))[0]),
     2, "corrupt safetensors"),
    ("ckpt-safetensors-truncated", lambda l: info((l.checkpoint(), l.file("ckpt/model.safetensors",
     (l.tmp / "ckpt/model.safetensors").read_bytes()[:-7]))[0]), 2, "corrupt safetensors"),
    ("ckpt-safetensors-huge-header", lambda l: info((l.checkpoint(weights=False), l.file(
        "ckpt/model.safetensors", struct.pack("<Q", 2**62) + b"{}"))[0]), 2, "header length exceeds"),
    ("ckpt-safetensors-header-list", lambda l: info((l.checkpoint(weights=False), l.file(
        "ckpt/model.safetensors", struct.pack("<Q", 2) + b"[]"))[0]), 2, "corrupt safetensors"),
    ("ckpt-safetensors-header-garbage", lambda l: info((l.checkpoint(weights=False), l.file(
        "ckpt/model.safetensors", struct.pack("<Q", 4) + b"\xff\xfe{["))[0]), 2, "corrupt safetensors"),
    ("ckpt-index-weight-map-list", lambda l: info((l.checkpoint(), l.file(
        "ckpt/model.safetensors.index.json", '{"weight_map": ["model.safetensors"]}'))[0]), 2, "malformed shard index"),
    ("ckpt-index-escapes-folder", lambda l: info((l.checkpoint(), l.file(
        "ckpt/model.safetensors.index.json", '{"weight_map": {"w": "../../etc/passwd.safetensors"}}'))[0]),
     2, "outside the folder"),
    ("ckpt-index-absolute-path", lambda l: info((l.checkpoint(), l.file(
        "ckpt/model.safetensors.index.json", '{"weight_map": {"w": "/etc/passwd"}}'))[0]), 2, "outside the folder"),
    ("ckpt-index-missing-shard", lambda l: info((l.checkpoint(), l.file(
        "ckpt/model.safetensors.index.json", '{"weight_map": {"w": "model-2.safetensors"}}'))[0]), 2, "missing"),
    ("ckpt-index-broken", lambda l: info((l.checkpoint(), l.file("ckpt/model.safetensors.index.json", "{"))[0]),
     2, "malformed shard index"),
    ("ckpt-path-is-a-file", lambda l: info(l.file("notes.txt", "hello")), 2, "expected a checkpoint folder"),
    ("ckpt-path-missing", lambda l: info(l.tmp / "nowhere"), 2, "no such file or folder"),
    ("ckpt-dev-null", lambda l: info("/dev/null"), 2, "no such checkpoint folder"),
    ("ckpt-bad-device", lambda l: info("demo")[:-1] + ["quantum"], 2, "unknown device"),
    ("ckpt-missing-gpu", lambda l: info("demo")[:-1] + ["cuda:7"], 2, "cuda:7"),
    # ---- GGUF files
    ("gguf-empty", lambda l: info(l.file("m.gguf", b"")), 2, "not a readable GGUF"),
    ("gguf-random", lambda l: info(l.file("m.gguf", bytes(range(256)) * 16)), 2, "not a readable GGUF"),
    ("gguf-bad-version", lambda l: info(l.file("m.gguf", gguf_header(999, 0, 0))), 2, "version 999"),
    ("gguf-2e60-tensors", lambda l: info(l.file("m.gguf", gguf_header(3, 2**60, 2**60, b"\0" * 64))), 2,
     "not a readable GGUF"),
    ("gguf-huge-string", lambda l: info(l.file("m.gguf", gguf_header(3, 0, 1, struct.pack("<Q", 2**62) + b"a" * 32))),
     2, "not a readable GGUF"),
    ("gguf-truncated-real", lambda l: info(l.file("m.gguf", l.gguf.open("rb").read(1 << 20))), 2, "not a readable GGUF"),
    ("gguf-is-a-folder", lambda l: info((l.tmp / "dir.gguf").mkdir() or l.tmp / "dir.gguf"), 2, "no such GGUF file"),
    ("gguf-missing", lambda l: info(l.tmp / "absent.gguf"), 2, "no such GGUF file"),
    ("gguf-1e9-blocks", lambda l: info(huge_block_gguf(l)), 2, "num_hidden_layers = 1000000000 is outside"),
    # ---- request files (edit fails before loading the model)
    ("req-dev-zero", lambda l: edit(l, Path("/dev/zero")), 2, "not a regular file"),
    ("req-fifo", lambda l: edit(l, fifo(l)), 2, "not a regular file"),
    ("req-folder", lambda l: edit(l, l.tmp), 2, "not a regular file"),
    ("req-missing", lambda l: edit(l, l.tmp / "absent.json"), 2, "cannot read request file"),
    ("req-nested-100k", lambda l: edit(l, l.requests(nested(100_000))), 2, "nested too deeply"),
    ("req-nested-40-in-meta", lambda l: edit(l, l.requests([{**RECORD, "meta": json.loads(nested(40))}])),
     2, "nested too deeply"),
    ("req-empty-file", lambda l: edit(l, l.requests("")), 2, "not valid JSON"),
    ("req-empty-list", lambda l: edit(l, l.requests([])), 2, "no records"),
    ("req-null", lambda l: edit(l, l.requests("null")), 2, "holds a JSON object or a list"),
    ("req-number", lambda l: edit(l, l.requests("42")), 2, "holds a JSON object or a list"),
    ("req-not-utf8", lambda l: edit(l, l.requests(b"\xff\xfe[]")), 2, "not UTF-8"),
    ("req-jsonl-bad-line-4", lambda l: edit(l, l.requests(
        "\n".join([json.dumps(RECORD), json.dumps(RECORD), "", '{"prompt": "{} is",}']), "r.jsonl")), 2,
     "line 4, column"),
    ("req-jsonl-bad-record-line-5", lambda l: edit(l, l.requests(
        "\n".join([json.dumps(RECORD)] * 4 + ['{"prompt": "{} is", "subject": "Rome"}']), "r.jsonl")), 2,
     "line 5: record 4: no 'target_new'"),
    ("req-pretty-json-error-line", lambda l: edit(l, l.requests(
        json.dumps([RECORD, RECORD], indent=1)[:-3] + ",,]")), 2, "(line 13,"),
    ("req-missing-subject", lambda l: edit(l, l.requests([{"prompt": "{} is in", "target_new": "Italy"}])),
     2, "no 'subject'"),
    ("req-two-slots", lambda l: edit(l, l.requests([{**RECORD, "prompt": "{} and {}"}])), 2, "more than one"),
    ("req-subject-not-in-prompt", lambda l: edit(l, l.requests([{**RECORD, "prompt": "Paris is in"}])), 2,
     "does not occur"),
    ("req-empty-target", lambda l: edit(l, l.requests([{**RECORD, "target_new": " "}])), 2, "new target is empty"),
    ("req-numeric-target", lambda l: edit(l, l.requests([{**RECORD, "target_new": 7}])), 2, "must be a string"),
    ("req-neighborhood-not-list", lambda l: edit(l, l.requests([{**RECORD, "neighborhood": "x"}])), 2,
     "must be a list"),
    ("req-prompt-100k-chars", lambda l: edit(l, l.requests([{**RECORD, "prompt": "word " * 20_000 + "{}"}])), 2,
     "longer than"),
    ("req-record-is-list", lambda l: edit(l, l.requests([[RECORD]])), 2, "expected a JSON object"),
    # ---- options
    ("opt-hparams-negative-steps", lambda l: edit_opts(l, "--hparams", '{"v_num_grad_steps": -3}'), 2,
     "v_num_grad_steps = -3 is outside"),
    ("opt-flag-negative-steps", lambda l: edit_opts(l, "--steps", "-3"), 2, "v_num_grad_steps = -3 is outside"),
    ("opt-hparams-nan-lr", lambda l: edit_opts(l, "--hparams", '{"v_lr": NaN}'), 2, "v_lr must be a finite number"),
    ("opt-hparams-inf-lr", lambda l: edit_opts(l, "--hparams", '{"v_lr": Infinity}'), 2, "finite number"),
    ("opt-hparams-string-lr", lambda l: edit_opts(l, "--hparams", '{"v_lr": "fast"}'), 2, "v_lr must be a finite"),
    ("opt-hparams-bool-layer", lambda l: edit_opts(l, "--hparams", '{"layer": true}'), 2, "layer must be an integer"),
    ("opt-hparams-list", lambda l: edit_opts(l, "--hparams", "[1, 2]"), 2, "must be a JSON object"),
    ("opt-hparams-unknown", lambda l: edit_opts(l, "--hparams", '{"learning_rate": 1}'), 2, "unknown hyper-parameter"),
    ("opt-hparams-not-json", lambda l: edit_opts(l, "--hparams", "fast please"), 2, "neither a JSON object"),
    ("opt-hparams-deep-file", lambda l: edit_opts(l, "--hparams", str(l.file("hp.json", nested(100_000)))), 2,
     "nested too deeply"),
    ("opt-hparams-dtype", lambda l: edit_opts(l, "--hparams", '{"mom2_dtype": "int8"}'), 2, "mom2_dtype must be one of"),
    ("opt-stats-tokens-zero", lambda l: edit_opts(l, "--stats-tokens", "0"), 2, "mom2_n_tokens = 0 is outside"),
    ("opt-layer-negative", lambda l: edit_opts(l, "--layer", "-1"), 2, "layer = -1 is outside"),
    ("opt-steps-not-int", lambda l: edit_opts(l, "--steps", "many"), 2, "invalid int value"),
    ("opt-unknown-dtype", lambda l: info("demo") + ["--dtype", "int4"], 2, "invalid choice"),
    ("opt-unknown-command", lambda l: ["frobnicate"], 2, "invalid choice"),
    ("opt-shard-size-lots", lambda l: export(l, l.tmp / "out", "--max-shard-size", "lots"), 2,
     "--max-shard-size 'lots'"),
    ("opt-shard-size-zero", lambda l: export(l, l.tmp / "out", "--max-shard-size", "0"), 2, "at least 1MiB"),
    ("opt-shard-size-negative", lambda l: export(l, l.tmp / "out", "--max-shard-size=-5GB"), 2, "expected a size"),
    ("opt-shard-size-1kb", lambda l: export(l, l.tmp / "out", "--max-shard-size", "1KB"), 2, "at least 1MiB"),
    # ---- export targets
    # issue 17's output-path policy refuses the system folders by name, before looking at what is there
    ("out-proc-version", lambda l: export(l, "/proc/version"), 2, "a system folder); refusing to write it"),
    ("out-proc-version-overwrite", lambda l: export(l, "/proc/version", "--overwrite"), 2, "refusing to write it"),
    ("out-under-a-file", lambda l: export(l, "/proc/version/edited"), 2, "refusing to write it"),
    ("out-dev-null", lambda l: export(l, "/dev/null", "--overwrite"), 2, "refusing to write it"),
    ("out-is-the-workspace", lambda l: export(l, l.ws, "--overwrite"), 2, "the workspace or the base checkpoint"),
    ("out-in-the-workspace", lambda l: export(l, l.ws / "deltas", "--overwrite"), 2, "the workspace or the base"),
    ("out-holds-the-workspace", lambda l: export(l, l.ws.parent, "--overwrite"), 2, "the workspace or the base"),
    ("out-is-the-base", lambda l: export(l, l.base, "--overwrite"), 2, "the workspace or the base checkpoint"),
    ("out-link-to-the-workspace", lambda l: export(l, fake_export_with_link(l), "--overwrite"), 2,
     "the workspace or the base"),
    ("out-not-an-export", lambda l: export(l, non_export_folder(l), "--overwrite"), 2,
     "is not an earlier Edit Auditor export"),
    ("out-a-plain-file", lambda l: export(l, l.file("model.txt", "x"), "--overwrite"), 2, "is not a folder"),
    ("out-exists", lambda l: export(l, non_export_folder(l)), 2, "already exists"),
    # ---- ledgers and workspaces
    ("ws-not-a-workspace", lambda l: verify(l.tmp), 2, "not a workspace"),
    ("ws-ledger-random-bytes", lambda l: (l.file("ws/ledger.db", bytes(range(256)) * 64), verify(l.tmp / "ws"))[1],
     2, "not a readable SQLite ledger"),
    ("ws-ledger-empty-file", lambda l: (l.file("ws/ledger.db", b""), verify(l.tmp / "ws"))[1], 2,
     "not an Edit Auditor ledger"),
    ("ws-ledger-foreign-sqlite", lambda l: verify(foreign_sqlite(l)), 2, "not an Edit Auditor ledger"),
    ("ws-ledger-from-the-future", lambda l: verify(future_ledger(l)), 2, "newer Edit Auditor"),
    ("ws-ledger-is-a-folder", lambda l: ((l.tmp / "ws" / "ledger.db").mkdir(parents=True), verify(l.tmp / "ws"))[1],
     2, "not a workspace"),
    ("ws-show-missing-entry", lambda l: ["ledger", "show", "--workspace", str(l.ledger(2)), "99"], 2, "no ledger entry 99"),
    ("ws-init-into-a-file", lambda l: ["workspace", "init", "demo", str(l.file("f", "x")), "--device", "cpu"], 2,
     "is not an empty folder"),
    ("ws-init-into-a-workspace", lambda l: ["workspace", "init", "demo", str(l.ledger(1)), "--device", "cpu"], 2,
     "already a workspace"),
    ("ws-edit-missing-workspace", lambda l: ["edit", "--workspace", str(l.tmp / "none"), "--requests",
                                             str(l.requests([RECORD])), "--device", "cpu"], 2, "not a workspace"),
    ("ws-expect-head-garbage", lambda l: verify(l.ledger(2), "--expect-head", "lots"), 2, "is not a sha256 hash"),
    ("ws-base-missing", lambda l: workspace_on(l, l.tmp / "moved-away"), 2, "cannot load the base checkpoint"),
    ("ws-base-is-another-model", lambda l: workspace_on(l, l.base), 2, "is not the one this workspace was built on"),
    ("ws-base-is-hostile", lambda l: workspace_on(l, l.checkpoint(num_hidden_layers=10**9)), 2,
     "num_hidden_layers = 1000000000 is outside"),
    ("ws-revert-an-unknown-entry", lambda l: ["revert", "--workspace", str(l.ws), "99", "--device", "cpu"], 2,
     "no ledger entry 99"),
    ("ws-export-deleted-head", lambda l: ["export", "--workspace", str(deleted_head(l)), "--out", str(l.tmp / "o")],
     2, "the ledger does not verify"),
    ("ws-export-changed-entry", lambda l: ["export", "--workspace", str(swapped_delta_ledger(l)), "--out",
                                           str(l.tmp / "o")], 2, "the ledger does not verify"),
    # ---- ledgers that fail verify: exit 1
    ("verify-deleted-head", lambda l: verify(deleted_head(l)), 1, ""),
    ("verify-deleted-head-and-file", lambda l: verify((lambda f: ((f / "ledger.head").unlink(), f)[1])(deleted_head(l))),
     1, ""),
    ("verify-changed-entry", lambda l: verify(swapped_delta_ledger(l)), 1, ""),
    ("verify-missing-delta-file", lambda l: verify(missing_delta(l)), 1, ""),
    ("verify-truncated-delta-file", lambda l: verify(corrupt_delta(l)), 1, ""),
    ("verify-head-file-garbage", lambda l: verify((lambda f: (l.file(str((f / "ledger.head").relative_to(l.tmp)),
                                                                     b"\x00garbage"), f)[1])(l.ledger(2))), 1, ""),
    ("verify-head-file-of-another-ledger", lambda l: verify(moved_head_file(l)), 1, ""),
    ("verify-unknown-expected-head", lambda l: verify(l.ledger(2), "--expect-head", "sha256:" + "0" * 64), 1, ""),
]


def huge_block_gguf(lab: Lab) -> Path:
    """A well-formed GGUF whose metadata asks for a billion layers."""
    import gguf
    import numpy as np

    path = lab.tmp / "huge.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(10**9)
    w.add_embedding_length(576)
    w.add_feed_forward_length(1536)
    w.add_head_count(9)
    w.add_tensor("token_embd.weight", np.zeros((4, 576), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# ---------------------------------------------------------------- fixtures and checks


@pytest.fixture(scope="module")
def shared(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One real workspace on the demo model, with one applied edit, shared by every case."""
    from test_workspace import synthetic_result

    from auditor.engine.deltas import Delta, apply_delta
    from auditor.run.workspace import Workspace

    root = tmp_path_factory.mktemp("hostile")
    ws = Workspace.init(demo_dir, root / "workspace", device="cpu")
    ws.record(synthetic_result(ws, 4, 11))
    ws.close()
    from auditor.model.checkpoint import demo_gguf

    return {"ws": root / "workspace", "base": demo_dir, "gguf": demo_gguf(),
            "demo_config": json.loads((demo_dir / "config.json").read_text())}


IGNORED_SUFFIXES = ("-wal", "-shm", ".lock")


def snapshot(*roots: Path) -> dict[str, str]:
    """sha256 of every regular file under ``roots`` (size and mtime for files over 8 MB)."""
    out = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            if p.is_symlink() or not p.is_file() or p.name.endswith(IGNORED_SUFFIXES):
                continue
            st = p.stat()
            out[str(p)] = (f"{st.st_size}:{st.st_mtime_ns}" if st.st_size > 8 << 20
                           else hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def check_outcome(code: int, err: str, expected_code: int, says: str) -> None:
    assert "Traceback" not in err
    assert code == expected_code, err
    if expected_code == 2:
        assert err.startswith("edit-auditor: error: ") and err.count("\n") == 1, err
        assert says in err, err


@pytest.mark.parametrize("name, build, expected_code, says", CASES, ids=[c[0] for c in CASES])
def test_hostile_input(name: str, build: Build, expected_code: int, says: str, shared: dict, tmp_path: Path,
                       capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDIT_AUDITOR_CACHE", str(tmp_path / "cache")) if name.startswith("gguf") else None
    lab = Lab(tmp_path / "case", shared["demo_config"], shared["base"], shared["ws"], shared["gguf"])
    lab.tmp.mkdir()
    argv = build(lab)
    capsys.readouterr()
    before = snapshot(lab.tmp, shared["ws"], shared["base"])
    try:
        code = main(argv)
    except SystemExit as e:  # argparse
        code = e.code
    err = capsys.readouterr().err
    check_outcome(code, err, expected_code, says)
    assert snapshot(lab.tmp, shared["ws"], shared["base"]) == before  # nothing lost, nothing changed
    assert not (lab.tmp / "cache").exists() or not any((lab.tmp / "cache").rglob("*.safetensors"))


def test_the_corpus_is_large_and_varied() -> None:
    kinds = {name.split("-")[0] for name, *_ in CASES}
    assert len(CASES) >= 60 and kinds == {"ckpt", "gguf", "req", "opt", "out", "ws", "verify"}
    assert len({name for name, *_ in CASES}) == len(CASES)


def test_the_shared_workspace_survived_the_corpus(shared: dict) -> None:
    """Runs after the corpus (file order): the ledger still verifies and still has its one edit."""
    with Ledger(shared["ws"] / "ledger.db") as led:
        report = led.verify()
        assert report["ok"] and report["entries"] == 1 and report["head_id"] == 1


SUBPROCESS_CASES = ["req-dev-zero", "ckpt-config-null", "opt-shard-size-lots", "out-is-the-workspace",
                    "verify-deleted-head"]


@pytest.mark.parametrize("name", SUBPROCESS_CASES)
def test_hostile_input_through_the_installed_script(name: str, shared: dict, tmp_path: Path) -> None:
    """The same cases through the real ``edit-auditor`` executable: exit code and stderr as a user sees them."""
    _, build, expected_code, says = next(c for c in CASES if c[0] == name)
    lab = Lab(tmp_path / "case", shared["demo_config"], shared["base"], shared["ws"], shared["gguf"])
    lab.tmp.mkdir()
    argv = build(lab)
    before = snapshot(lab.tmp, shared["ws"])
    script = Path(sys.executable).with_name("edit-auditor")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "auditor.cli"]
    proc = subprocess.run([*command, *argv], capture_output=True, text=True, timeout=300)
    check_outcome(proc.returncode, proc.stderr, expected_code, says)
    assert snapshot(lab.tmp, shared["ws"]) == before
