"""Checkpoints with torch.distributed.checkpoint (DCP): atomic, resumable, re-shardable to another plan.

What is stored is plan-independent: every parameter and optimizer-state tensor as the **full** tensor under its
full-model name (``model.layers.3.attn.q.weight``, ``optim.layers.3.attn.q.weight.exp_avg``). Before saving, TP
shards are gathered (hetero's uneven shards via ``tp.gather_full``, DTensors via ``full_tensor``); DCP writes each
key once although DP replicas hold copies. Loading under any plan (other world size, layer split, TP shares) reads
the keys of the rank's own layers and keeps its slice. Needs a file system all ranks see.

Atomicity: all ranks write into ``<root>/.tmp-step_<N>``; rank 0 then writes ``hetero.json`` (step, plan, model,
SHA-256 of every file) and renames the folder to ``<root>/step_<N>`` and updates ``<root>/latest``. A crash leaves
either the complete previous checkpoint or a ``.tmp-*`` folder that loading ignores. Loading verifies the checksums
and raises :class:`CheckpointError` naming the damaged file (on every rank, no hang).

    ckpt.save(pm, opt, "ckpt/", step=10)        # collective
    meta = ckpt.load(pm, opt, "ckpt/")          # latest complete checkpoint -> {"step": 10, ...}
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from hetero.runtime.parallelize import ParallelModel
from hetero.runtime.tp import gather_full, shard_of

MANIFEST = "hetero.json"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, corrupt, or made for another model."""


def _is_dtensor(t) -> bool:
    return hasattr(t, "full_tensor") and hasattr(t, "placements")


def _full(t: torch.Tensor, p, group) -> torch.Tensor:
    """Full value of parameter-shaped tensor ``t`` belonging to parameter ``p`` (collective over its TP group)."""
    if _is_dtensor(t):
        return t.full_tensor().detach().cpu()
    return gather_full(t.detach().cpu(), getattr(p, "_hetero_shard", None), group)


def _local(full: torch.Tensor, p) -> torch.Tensor:
    """This rank's slice of ``full`` for parameter ``p`` (hetero shard, DTensor shard, or all of it)."""
    if _is_dtensor(p):
        from torch.distributed.tensor import Shard

        mesh = p.device_mesh
        for i, pl in enumerate(p.placements):
            if isinstance(pl, Shard):
                full = torch.chunk(full, mesh.size(i), dim=pl.dim)[mesh.get_local_rank(i)]
        return full.contiguous()
    return shard_of(full, getattr(p, "_hetero_shard", None))


def _state_dict(pm: ParallelModel, optimizer) -> dict[str, torch.Tensor]:
    group = pm.rt.tp_group
    sd: dict[str, torch.Tensor] = {}
    for name, p in pm.named_parameters():
        sd[f"model.{name}"] = _full(p, p, group)
        state = optimizer.state.get(p, {}) if optimizer is not None else {}
        for k in sorted(state):
            v = state[k]
            if not isinstance(v, torch.Tensor):
                v = torch.tensor(v)
            if v.dim() > 0 and tuple(v.shape) == tuple(p.shape):
                sd[f"optim.{name}.{k}"] = _full(v, p, group)
            else:
                sd[f"optim.{name}.{k}"] = (v.full_tensor() if _is_dtensor(v) else v).detach().cpu().clone()
    return sd


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _agree(rank0_fn, *, world: int) -> Any:
    """Run ``rank0_fn`` on rank 0; broadcast its result or its error to every rank (so all raise together)."""
    out: list[Any] = [None]
    if dist.get_rank() == 0:
        try:
            out[0] = ("ok", rank0_fn())
        except Exception as e:  # broadcast the failure instead of leaving peers in a barrier
            out[0] = ("err", f"{type(e).__name__}: {e}")
    if world > 1:
        dist.broadcast_object_list(out, src=0)
    status, val = out[0]
    if status == "err":
        raise CheckpointError(val)
    return val


def save(pm: ParallelModel, optimizer, root: str | Path, *, step: int, extra: dict | None = None,
         keep: int = 2) -> Path:
    """Write a checkpoint of step ``step`` under ``root`` (collective over the world); keep the newest ``keep``
    checkpoints. Returns the checkpoint folder."""
    root = Path(root)
    world = dist.get_world_size()
    final, tmp = root / f"step_{step:08d}", root / f".tmp-step_{step:08d}"

    def prepare():
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()

    _agree(prepare, world=world)
    sd = _state_dict(pm, optimizer)
    dcp.save(sd, storage_writer=dcp.FileSystemWriter(str(tmp)))
    plan = pm.rt.plan

    def commit():
        files = {f.name: _sha256(f) for f in sorted(tmp.iterdir()) if f.is_file()}
        if ".metadata" not in files:
            raise CheckpointError(f"DCP wrote no .metadata into {tmp}")
        manifest = {"step": step, "world_size": world, "model": plan.model, "num_layers": plan.num_layers,
                    "plan": plan.to_dict(), "files": files, "extra": extra or {}}
        with open(tmp / MANIFEST, "w") as f:
            json.dump(manifest, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)  # the commit point
        pointer = root / ".latest.tmp"
        pointer.write_text(final.name + "\n")
        os.replace(pointer, root / "latest")
        _fsync_dir(root)
        done = sorted(p for p in root.glob("step_*") if p.is_dir())
        for old in done[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
        return str(final)

    return Path(_agree(commit, world=world))


def latest(root: str | Path) -> Path | None:
    """The newest complete checkpoint folder under ``root`` (``.tmp-*`` folders are ignored), or None."""
    root = Path(root)
    if (root / MANIFEST).is_file():  # root is itself a checkpoint
        return root
    pointer = root / "latest"
    if pointer.is_file():
        p = root / pointer.read_text().strip()
        if p.is_dir():
            return p
    done = sorted(p for p in root.glob("step_*") if p.is_dir() and (p / MANIFEST).is_file())
    return done[-1] if done else None


def verify(path: str | Path) -> dict:
    """Read and check a checkpoint folder's manifest and file checksums; returns the manifest or raises
    CheckpointError naming what is wrong."""
    path = Path(path)
    mf = path / MANIFEST
    if not mf.is_file():
        raise CheckpointError(f"{path} is not a complete checkpoint: {MANIFEST} is missing (interrupted save?)")
    try:
        manifest = json.loads(mf.read_text())
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{mf} is corrupt: {e}") from None
    for name, digest in files.items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"checkpoint {path} is corrupt: {name} is missing")
        if _sha256(f) != digest:
            raise CheckpointError(f"checkpoint {path} is corrupt: {name} does not match its SHA-256 in {MANIFEST}")
    return manifest


def load(pm: ParallelModel, optimizer, root: str | Path) -> dict:
    """Load the newest complete checkpoint under ``root`` (or the checkpoint folder ``root``) into this rank's
    part of the model and optimizer, whatever plan wrote it (collective). Returns the manifest
    (``step``, ``plan``, ``extra``...). Raises CheckpointError when there is none or it is damaged."""
    world = dist.get_world_size()
    plan = pm.rt.plan

    def check():
        path = latest(root)
        if path is None:
            raise CheckpointError(f"no complete checkpoint under {root}")
        manifest = verify(path)
        if manifest.get("num_layers") != plan.num_layers:
            raise CheckpointError(f"checkpoint {path} is of model {manifest.get('model')!r} with "
                                  f"{manifest.get('num_layers')} layers; this run's model {plan.model!r} has "
                                  f"{plan.num_layers}")
        return str(path), manifest

    path, manifest = _agree(check, world=world)
    reader = dcp.FileSystemReader(path)
    md = reader.read_metadata().state_dict_metadata
    sd: dict[str, torch.Tensor] = {}
    params = list(pm.named_parameters())
    problem = None
    for name, p in params:
        key = f"model.{name}"
        if key not in md:
            problem = f"checkpoint {path} has no parameter {name!r} (made for a different model?)"
            break
        want, full_shape = tuple(md[key].size), _full_shape(p)
        if want != full_shape:
            problem = f"checkpoint {path}: {name} has shape {list(want)}, this model {list(full_shape)}"
            break
        sd[key] = torch.empty(want, dtype=md[key].properties.dtype)
        for k in md:
            if k.startswith(f"optim.{name}.") and hasattr(md[k], "size"):
                sd[k] = torch.empty(tuple(md[k].size), dtype=md[k].properties.dtype)
    problems: list[Any] = [problem] * world
    if world > 1:  # every rank learns of any rank's problem before the collective load
        dist.all_gather_object(problems, problem)
    if any(problems):
        raise CheckpointError(next(p for p in problems if p))
    try:
        dcp.load(sd, storage_reader=reader)
    except Exception as e:  # DCP raises CheckpointException wrapping per-rank failures
        raise CheckpointError(f"reading checkpoint {path} failed: {str(e).splitlines()[0]}") from None
    with torch.no_grad():
        for name, p in params:
            local = _local(sd[f"model.{name}"], p)
            (p._local_tensor if _is_dtensor(p) else p).copy_(local)
            if optimizer is None:
                continue
            state = {}
            for k in [k for k in sd if k.startswith(f"optim.{name}.")]:
                field = k[len(f"optim.{name}."):]
                v = sd[k]
                if v.dim() > 0 and tuple(v.shape) == _full_shape(p):
                    v = _local(v, p).to(p.device)
                    if _is_dtensor(p):
                        from torch.distributed.tensor import DTensor

                        v = DTensor.from_local(v, p.device_mesh, p.placements, run_check=False)
                state[field] = v
            if state:
                optimizer.state[p] = state
    return manifest


def _full_shape(p) -> tuple[int, ...]:
    if _is_dtensor(p):
        return tuple(p.shape)
    meta = getattr(p, "_hetero_shard", None)
    shape = list(p.shape)
    if meta is not None:
        shape[meta[0]] = meta[3]
    return tuple(shape)
