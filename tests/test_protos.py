"""The protos are the seeds' definitions, generated code is current, and the seeds' client
example's imports work unchanged from the repository root."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_generated_code_is_current():
    pytest.importorskip("grpc_tools")
    result = subprocess.run(
        [sys.executable, "scripts/gen_protos.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def test_message_and_field_numbers_match_the_seeds():
    from aios_fast.protos import inference_pb2, payload_pb2

    packet = payload_pb2.AIOSPacket.DESCRIPTOR
    numbers = {f.name: (f.number, f.type) for f in packet.fields}
    fd = packet.fields[0].__class__
    assert numbers == {
        "session_id": (1, fd.TYPE_STRING),
        "seq_no": (2, fd.TYPE_UINT64),
        "frame_ptr": (3, fd.TYPE_BYTES),
        "data": (4, fd.TYPE_STRING),
        "ts": (5, fd.TYPE_DOUBLE),
        "output_ptr": (6, fd.TYPE_STRING),
        "files": (7, fd.TYPE_MESSAGE),
    }
    assert packet.fields_by_name["files"].is_repeated
    info = {f.name: (f.number, f.type) for f in payload_pb2.FileInfo.DESCRIPTOR.fields}
    assert info == {"metadata": (1, fd.TYPE_STRING), "file_data": (2, fd.TYPE_BYTES)}
    msg = inference_pb2.InferenceMessage.DESCRIPTOR.fields_by_name["rpc_data"]
    assert (msg.number, msg.type) == (1, fd.TYPE_BYTES)
    resp = inference_pb2.InferenceResponse.DESCRIPTOR.fields_by_name["message"]
    assert (resp.number, resp.type) == (1, fd.TYPE_BOOL)
    service = inference_pb2.DESCRIPTOR.services_by_name["InferenceProxy"]
    method = service.methods_by_name["infer"]
    assert method.input_type.name == "InferenceMessage"
    assert method.output_type.name == "InferenceResponse"


@pytest.mark.parametrize("where", ["root", "elsewhere"])
def test_seed_client_imports_run_from_anywhere(where, tmp_path):
    """The seeds' client is a script that imports ``from protos import ...``: it runs
    unchanged from the repository root and, aios-fast installed, from any directory."""
    code = (
        "from protos import inference_pb2, inference_pb2_grpc, payload_pb2\n"
        "p = payload_pb2.AIOSPacket(session_id='session-123', seq_no=1)\n"
        "f = payload_pb2.FileInfo(metadata='{}', file_data=b'x'); p.files.append(f)\n"
        "r = inference_pb2.InferenceMessage(rpc_data=p.SerializeToString())\n"
        "assert inference_pb2_grpc.InferenceProxyStub and r.rpc_data\n"
        "print('ok')\n"
    )
    folder = ROOT if where == "root" else tmp_path
    script = folder / ("seed_client_check.py" if where == "elsewhere" else "")
    if where == "elsewhere":
        script.write_text(code)
        args = [sys.executable, str(script)]
    else:
        args = [sys.executable, "-c", code]
    out = subprocess.run(args, cwd=folder, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
