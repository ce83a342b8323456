"""A process's distributed identity, read from whatever launcher started it.

torch.distributed's ``env://`` init only understands torchrun's variables
(RANK, WORLD_SIZE, MASTER_ADDR, ...). Clusters launch with ``srun`` or
``mpirun`` instead, which publish the same facts under other names. Reading
them here, in one place with no torch import, lets the training entry point
translate once (:func:`export_torch_env`) and lets the logic be unit-tested
with plain dicts.

Launcher priority (first match wins) and why:

1. ``RANK`` + ``WORLD_SIZE``: torchrun or the ``deepspeed`` launcher. These
   are explicit torch variables, so they override anything a surrounding
   ``srun``/``mpirun`` also set (e.g. torchrun started by srun once per node).
2. Open MPI (``OMPI_COMM_WORLD_*``).
3. PMI (MPICH, Intel MPI, hydra): ``PMI_RANK``/``PMI_SIZE``.
4. Slurm (``SLURM_PROCID``). Checked after MPI because ``mpirun`` inside a
   Slurm allocation still inherits the job's ``SLURM_*`` variables, which
   then describe the batch step, not the MPI ranks.
5. Otherwise a single process.

``MASTER_ADDR``/``MASTER_PORT`` from the environment always win over
derived values, so a user can pin the rendezvous point on any launcher. A
single process without them rendezvouses with itself on a free port the OS
picks, so two runs on one machine never collide on a fixed port.
"""

from __future__ import annotations

import itertools
import os
import re
import socket
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass

__all__ = [
    "LaunchEnv",
    "detect_launch_env",
    "expand_slurm_nodelist",
    "export_torch_env",
    "free_port",
]

DEFAULT_MASTER_ADDR = "127.0.0.1"
DEFAULT_MASTER_PORT = 29500

# Variables the `deepspeed` launcher (deepspeed/launcher/launch.py) sets in
# addition to torchrun's set. torchrun sets none of them (it uses
# LOCAL_WORLD_SIZE / GROUP_RANK / TORCHELASTIC_* instead), so their presence
# tells the two apart. CROSS_RANK is the node index, CROSS_SIZE the node
# count, LOCAL_SIZE the processes on this node.
_DEEPSPEED_MARKERS = ("CROSS_RANK", "CROSS_SIZE", "LOCAL_SIZE")


@dataclass(frozen=True)
class LaunchEnv:
    """Distributed identity of this process; ``launcher`` records where it came from."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    master_addr: str
    master_port: int
    launcher: str  # "torchrun" | "deepspeed" | "slurm" | "mpi" | "single"


def detect_launch_env(env: Mapping[str, str] | None = None) -> LaunchEnv:
    """Read the launcher's variables from ``env`` (default ``os.environ``).

    Raises ``ValueError`` with a one-line message naming the offending
    variable when a value is malformed or inconsistent, because a wrong rank
    otherwise surfaces much later as a rendezvous hang.
    """
    env = os.environ if env is None else env

    if "RANK" in env and "WORLD_SIZE" in env:
        launcher = "deepspeed" if any(k in env for k in _DEEPSPEED_MARKERS) else "torchrun"
        rank = _int(env, "RANK")
        world = _int(env, "WORLD_SIZE")
        local_rank = _int(env, "LOCAL_RANK", 0)
        # The deepspeed launcher publishes the per-node count as LOCAL_SIZE.
        lws_var = "LOCAL_WORLD_SIZE" if "LOCAL_WORLD_SIZE" in env else "LOCAL_SIZE"
        local_world = _int(env, lws_var, 1)
        addr = env.get("MASTER_ADDR") or DEFAULT_MASTER_ADDR
        port = _port(env)
        return _checked(rank, world, local_rank, local_world, addr, port, launcher)

    if "OMPI_COMM_WORLD_RANK" in env:
        return _mpi(
            env,
            rank_var="OMPI_COMM_WORLD_RANK",
            size_var="OMPI_COMM_WORLD_SIZE",
            local_rank_vars=("OMPI_COMM_WORLD_LOCAL_RANK",),
            local_size_vars=("OMPI_COMM_WORLD_LOCAL_SIZE",),
        )

    if "PMI_RANK" in env:
        # MPI_LOCAL* come from hydra (MPICH, Intel MPI); PMI_LOCAL_* from Cray PMI.
        return _mpi(
            env,
            rank_var="PMI_RANK",
            size_var="PMI_SIZE",
            local_rank_vars=("MPI_LOCALRANKID", "PMI_LOCAL_RANK"),
            local_size_vars=("MPI_LOCALNRANKS", "PMI_LOCAL_SIZE"),
        )

    if "SLURM_PROCID" in env:
        return _slurm(env)

    addr = env.get("MASTER_ADDR") or DEFAULT_MASTER_ADDR
    port = _port(env) if env.get("MASTER_PORT", "").strip() else free_port()
    return _checked(0, 1, 0, 1, addr, port, "single")


def free_port(addr: str = DEFAULT_MASTER_ADDR) -> int:
    """A TCP port nobody listens on now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((addr, 0))
        return s.getsockname()[1]


def export_torch_env(le: LaunchEnv, env: MutableMapping[str, str] | None = None) -> None:
    """Write ``le`` as torchrun-style variables so ``init_process_group("env://")`` works
    under srun/mpirun exactly as under torchrun."""
    env = os.environ if env is None else env
    env["RANK"] = str(le.rank)
    env["WORLD_SIZE"] = str(le.world_size)
    env["LOCAL_RANK"] = str(le.local_rank)
    env["LOCAL_WORLD_SIZE"] = str(le.local_world_size)
    env["MASTER_ADDR"] = le.master_addr
    env["MASTER_PORT"] = str(le.master_port)


def expand_slurm_nodelist(nodelist: str) -> list[str]:
    """Expand a compressed Slurm host list, in Slurm's order.

    Handles the forms ``scontrol show hostnames`` does, so no subprocess is
    needed on compute nodes: plain lists (``"a,b"``), bracket ranges with
    zero padding taken from the range start (``"node[001-004,007]"``),
    suffixes after a bracket (``"n[1-2]-ib"``), and several bracket groups in
    one name (``"r[1-2]n[1-2]"`` -> r1n1, r1n2, r2n1, r2n2). Stepped ranges
    (``1-9:2``) are not Slurm host-list syntax and are rejected.
    """
    text = nodelist.strip()
    if not text:
        return []
    hosts: list[str] = []
    for expr in _split_top_level(text):
        hosts.extend(_expand_host_expr(expr, nodelist))
    return hosts


# --------------------------------------------------------------------------- helpers


def _int(env: Mapping[str, str], var: str, default: int | None = None) -> int:
    raw = env.get(var)
    if raw is None or raw.strip() == "":
        if default is None:
            raise ValueError(f"{var} is required but not set")
        return default
    try:
        return int(raw.strip())
    except ValueError:
        raise ValueError(f"{var}={raw!r} is not an integer") from None


def _first_int(env: Mapping[str, str], vars_: tuple[str, ...], default: int) -> tuple[int, bool]:
    """First set variable of ``vars_`` as int, and whether any was set."""
    for var in vars_:
        if env.get(var, "").strip():
            return _int(env, var), True
    return default, False


def _port(env: Mapping[str, str], default: int = DEFAULT_MASTER_PORT) -> int:
    if not env.get("MASTER_PORT", "").strip():
        return default
    port = _int(env, "MASTER_PORT")
    if not 1 <= port <= 65535:
        raise ValueError(f"MASTER_PORT={env['MASTER_PORT']!r} is outside 1..65535")
    return port


def _slurm_port(env: Mapping[str, str]) -> int:
    # Derived from the job id so every rank of a job agrees without talking,
    # and two jobs sharing a node are unlikely to collide. 10000..29999 stays
    # below the usual Linux ephemeral range (32768+).
    if not env.get("SLURM_JOB_ID", "").strip():
        return _port(env)
    return _port(env, 10000 + _int(env, "SLURM_JOB_ID") % 20000)


def _checked(
    rank: int,
    world: int,
    local_rank: int,
    local_world: int,
    addr: str,
    port: int,
    launcher: str,
    names: tuple[str, str, str, str] = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"),
) -> LaunchEnv:
    rank_v, world_v, lrank_v, lworld_v = names
    if world < 1:
        raise ValueError(f"{world_v}={world} must be >= 1")
    if not 0 <= rank < world:
        raise ValueError(f"{rank_v}={rank} is outside 0..{world - 1} ({world_v}={world})")
    if local_world < 1:
        raise ValueError(f"{lworld_v}={local_world} must be >= 1")
    if not 0 <= local_rank < local_world:
        raise ValueError(
            f"{lrank_v}={local_rank} is outside 0..{local_world - 1} ({lworld_v}={local_world})"
        )
    if local_world > world:
        raise ValueError(f"{lworld_v}={local_world} exceeds {world_v}={world}")
    return LaunchEnv(rank, world, local_rank, local_world, addr, port, launcher)


def _mpi(
    env: Mapping[str, str],
    rank_var: str,
    size_var: str,
    local_rank_vars: tuple[str, ...],
    local_size_vars: tuple[str, ...],
) -> LaunchEnv:
    rank = _int(env, rank_var)
    world = _int(env, size_var)
    local_rank, _ = _first_int(env, local_rank_vars, 0)
    local_world, local_known = _first_int(env, local_size_vars, 1)
    lrank_name = next((v for v in local_rank_vars if v in env), local_rank_vars[0])
    lsize_name = next((v for v in local_size_vars if v in env), local_size_vars[0])

    addr = env.get("MASTER_ADDR", "").strip()
    if not addr:
        # mpirun inside a Slurm allocation: the job's first node is a host
        # every rank can compute identically.
        nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
        if nodelist:
            addr = expand_slurm_nodelist(nodelist)[0]
        elif local_known and world > local_world:
            # Multi-node and nothing names rank 0's host: 127.0.0.1 would hang
            # every remote rank at rendezvous, so fail loudly instead.
            raise ValueError(
                f"MASTER_ADDR is not set but {size_var}={world} spans several nodes "
                f"({lsize_name}={local_world}); export it, e.g. mpirun -x MASTER_ADDR=<host>"
            )
        else:
            addr = DEFAULT_MASTER_ADDR
    return _checked(
        rank,
        world,
        local_rank,
        local_world,
        addr,
        _slurm_port(env),
        "mpi",
        (rank_var, size_var, lrank_name, lsize_name),
    )


def _slurm(env: Mapping[str, str]) -> LaunchEnv:
    rank = _int(env, "SLURM_PROCID")
    # The step's own count first: `srun -n 2` inside an 8-task allocation
    # runs 2 tasks while SLURM_NTASKS still says 8.
    world_var = next(
        (v for v in ("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "SLURM_NPROCS") if v in env),
        "SLURM_NTASKS",
    )
    world = _int(env, world_var)
    local_rank = _int(env, "SLURM_LOCALID", 0)

    # Step value first for the same reason as above; SLURM_NTASKS_PER_NODE
    # is only set when the user passed --ntasks-per-node; SLURM_TASKS_PER_NODE
    # is the allocation's layout.
    tpn_var = next(
        (
            v
            for v in (
                "SLURM_STEP_TASKS_PER_NODE",
                "SLURM_NTASKS_PER_NODE",
                "SLURM_TASKS_PER_NODE",
            )
            if env.get(v)
        ),
        None,
    )
    if tpn_var is not None:
        counts = _parse_tasks_per_node(env[tpn_var], tpn_var)
        # Uneven layouts ("2,1") differ per node; SLURM_NODEID picks ours. It
        # indexes the job's nodes, which is the step's list unless the step
        # runs on a subset; out of range falls back to the first entry.
        node_id = _int(env, "SLURM_NODEID", 0)
        local_world = counts[node_id] if 0 <= node_id < len(counts) else counts[0]
    else:
        # No layout published (unusual outside hand-built envs): spread the
        # tasks evenly over the node count if known, else assume one node.
        nodes, known = _first_int(
            env, ("SLURM_STEP_NUM_NODES", "SLURM_NNODES", "SLURM_JOB_NUM_NODES"), 1
        )
        local_world = -(-world // max(nodes, 1)) if known else world
        local_world = max(local_world, local_rank + 1)

    addr = env.get("MASTER_ADDR", "").strip()
    if not addr:
        nodelist_var = next(
            (
                v
                for v in ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST")
                if env.get(v)
            ),
            None,
        )
        hosts = expand_slurm_nodelist(env[nodelist_var]) if nodelist_var else []
        addr = hosts[0] if hosts else DEFAULT_MASTER_ADDR

    return _checked(
        rank,
        world,
        local_rank,
        local_world,
        addr,
        _slurm_port(env),
        "slurm",
        ("SLURM_PROCID", world_var, "SLURM_LOCALID", tpn_var or "SLURM_NTASKS_PER_NODE"),
    )


_TPN_ITEM = re.compile(r"^(\d+)(?:\(x(\d+)\))?$")


def _parse_tasks_per_node(value: str, var: str) -> list[int]:
    """``"4(x2),1"`` -> ``[4, 4, 1]``: one entry per node of the step."""
    counts: list[int] = []
    for item in value.split(","):
        m = _TPN_ITEM.match(item.strip())
        if m is None:
            raise ValueError(f"{var}={value!r} is not a Slurm tasks-per-node list")
        counts.extend([int(m.group(1))] * int(m.group(2) or 1))
    return counts


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside ``[...]``."""
    parts: list[str] = []
    depth = 0
    start = 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
            if depth > 1:
                raise ValueError(f"nodelist={text!r} has nested brackets")
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"nodelist={text!r} has an unmatched ']'")
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth != 0:
        raise ValueError(f"nodelist={text!r} has an unmatched '['")
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


def _expand_bracket(body: str, nodelist: str) -> list[str]:
    out: list[str] = []
    for item in body.split(","):
        m = _RANGE.match(item.strip())
        if m is None:
            raise ValueError(f"nodelist={nodelist!r} has a bad range {item!r}")
        lo_s, hi_s = m.group(1), m.group(2)
        if hi_s is None:
            out.append(lo_s)
            continue
        lo, hi = int(lo_s), int(hi_s)
        if hi < lo:
            raise ValueError(f"nodelist={nodelist!r} has a descending range {item!r}")
        width = len(lo_s)  # Slurm pads to the width of the range start
        out.extend(str(n).zfill(width) for n in range(lo, hi + 1))
    return out


def _expand_host_expr(expr: str, nodelist: str) -> list[str]:
    pieces = re.split(r"\[([^\]]*)\]", expr)
    # re.split with one group alternates literal, bracket body, literal, ...
    choices = [[p] if i % 2 == 0 else _expand_bracket(p, nodelist) for i, p in enumerate(pieces)]
    return ["".join(combo) for combo in itertools.product(*choices)]
