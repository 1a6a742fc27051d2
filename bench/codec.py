"""Packet codec benchmark: aios_fast codec (compiled and pure) against protobuf (upb).

    python -m bench.codec [--rounds 9] [--write]

Each case does the same work with each implementation; the table gives median ns/op
and the speed-up over protobuf measured in the same run. --write updates the
"Packet codec" section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import platform

from google.protobuf.internal import api_implementation

from aios_fast import _codec_py
from aios_fast.protos import payload_pb2

from . import payloads
from ._timing import compare, fmt_ns, progress, publish

HARNESS = "harness overhead"
GOALS = {"routing read (small)": 3.0, "decode 4 MiB file": 100.0, "encode (small)": 1.0}
PATCH = '{"outputs": [{"host": "10.0.0.2", "port": 6379, "queue_name": "q", "block_id": "b"}]}'


def cases(codec) -> dict[str, object]:
    """name -> zero-argument callable doing that case's work with ``codec`` (None: protobuf)."""
    small, large = payloads.small(), payloads.large()
    if codec is None:
        parse = payload_pb2.AIOSPacket.FromString
        src = parse(small)

        def build():
            msg = payload_pb2.AIOSPacket(
                session_id=src.session_id, seq_no=src.seq_no, data=src.data, ts=src.ts
            )
            msg.files.add(metadata=src.files[0].metadata, file_data=src.files[0].file_data)
            return msg.SerializeToString()

        def patch():
            msg = parse(small)
            msg.output_ptr = PATCH
            return msg.SerializeToString()
    else:
        parse = codec.decode_packet
        src = payload_pb2.AIOSPacket.FromString(small)
        meta, blob = src.files[0].metadata, src.files[0].file_data

        def build():
            return codec.encode_packet(
                codec.Packet(
                    session_id=src.session_id,
                    seq_no=src.seq_no,
                    data=src.data,
                    ts=src.ts,
                    files=[codec.FileInfo(meta, blob)],
                )
            )

        def patch():
            packet = parse(small)
            packet.output_ptr = PATCH
            return codec.encode_packet(packet)

    def routing():
        m = parse(small)
        return m.session_id, m.seq_no

    def harness():  # the closure call, a C call and a tuple: what every case pays
        m = len(small)
        return m, m

    def full():
        m = parse(small)
        f = m.files[0]
        return m.session_id, m.seq_no, m.data, m.ts, m.output_ptr, f.metadata, f.file_data

    def big():
        m = parse(large)
        return m.session_id, m.files[0].file_data

    return {
        HARNESS: harness,
        "routing read (small)": routing,
        "decode all fields (small)": full,
        "decode 4 MiB file": big,
        "encode (small)": build,
        "patch output_ptr + re-encode (small)": patch,
    }


def run(rounds: int) -> list[dict]:
    impls = {"protobuf": None, "py": _codec_py}
    try:
        from aios_fast import _codec

        impls["c"] = _codec
    except ImportError:
        progress("aios_fast._codec is not built: reporting the pure twin only")
    table = {name: cases(mod) for name, mod in impls.items()}
    rows = []
    for case in table["protobuf"]:
        if case == HARNESS:
            continue
        progress(f"codec: {case} ...")
        medians = compare(
            {HARNESS: table["protobuf"][HARNESS], **{i: table[i][case] for i in impls}},
            rounds=rounds,
        )
        rows.append({"case": case, **medians})
    return rows


def render(rows: list[dict], rounds: int) -> str:
    has_c = "c" in rows[0]
    lines = [
        f"Machine: {platform.machine()}, Python {platform.python_version()}, protobuf "
        f"backend {api_implementation.Type()}; median of {rounds} interleaved rounds.",
        "",
        "Times include the harness (a closure call building the result tuple); `net` "
        "subtracts the harness overhead measured in the same rounds (a closure calling "
        "len() and building the same tuple), leaving parse + field reads. Goals are "
        "judged on net.",
        "",
        "| case | protobuf | aios_fast c | aios_fast py | harness | c vs protobuf | "
        "net c vs protobuf | goal |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        c, pb, h = row.get("c"), row["protobuf"], row[HARNESS]
        ratio = f"{pb / c:.1f}x" if c else "n/a"
        net = (pb - h) / (c - h) if c and c > h else None
        goal = GOALS.get(row["case"])
        goal_txt = ""
        if goal:
            goal_txt = f">= {goal:g}x {'met' if net and net >= goal else 'MISSED'}"
        lines.append(
            f"| {row['case']} | {fmt_ns(pb)} | {fmt_ns(c) if c else 'n/a'} | "
            f"{fmt_ns(row['py'])} | {fmt_ns(h)} | {ratio} | "
            f"{f'{net:.1f}x' if net else 'n/a'} | {goal_txt} |"
        )
    if not has_c:
        lines.append("\n(compiled codec not built: no c column)")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    opts = parser.parse_args(argv)
    table = render(run(opts.rounds), opts.rounds)
    publish("Packet codec", "bench.codec", table, opts.write, argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
