"""``seqplanner doctor``: what a user needs to know before running anything."""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import os
import platform
import sys
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def _version(module: str) -> str | None:
    """Installed distribution version of an importable module, or None when it does not import."""
    try:
        mod = importlib.import_module(module)
    except Exception:
        return None
    try:
        return importlib.metadata.version(module)
    except importlib.metadata.PackageNotFoundError:
        return str(getattr(mod, "__version__", "present"))


def _torch_info() -> dict[str, Any]:
    try:
        import torch
    except Exception as e:
        return {"ok": False, "error": f"torch import failed: {e}"}
    info: dict[str, Any] = {"ok": True, "version": torch.__version__, "threads": torch.get_num_threads(),
                            "cuda_available": torch.cuda.is_available(), "cuda_build": torch.version.cuda}
    if torch.cuda.is_available():
        info["devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["bf16"] = torch.cuda.is_bf16_supported()
    info["default_device"] = "cuda" if torch.cuda.is_available() else "cpu"
    return info


def _kernel_info() -> dict[str, Any]:
    """Whether the fused C decoder step (CPU TT planning) builds and loads here (builds it once if needed)."""
    try:
        from ros_seqplanner.planning import ckernel

        lib = ckernel.load_kernel()
    except Exception as e:  # torch missing etc.
        return {"ok": False, "error": str(e)}
    if lib is None:
        return {"ok": False, "error": ckernel.LOAD_ERROR}
    return {"ok": True, "avx2": bool(lib.ttk_has_avx2()), "path": str(ckernel.build())}


def _ros_info() -> dict[str, Any]:
    from ros_seqplanner.rosenv import ros_env_summary

    info: dict[str, Any] = {"env": ros_env_summary()}
    try:
        import rclpy
        from rclpy.utilities import get_rmw_implementation_identifier

        info["rclpy"] = True
        info["rmw"] = get_rmw_implementation_identifier()
        info["distro"] = os.environ.get("ROS_DISTRO", "kilted (PyPI wheels)" if "site-packages" in rclpy.__file__
                                        else "<unset>")
    except Exception as e:
        info["rclpy"] = False
        info["rclpy_error"] = str(e)
    for mod in ("launch", "launch_ros", "rosbag2_py", "ros2cli"):
        info[mod] = _real_ros_module(mod)
    return info


def _real_ros_module(name: str) -> bool:
    """True only for the real ROS 2 package (PyPI's unrelated ``launch`` 0.1.3 does not count)."""
    try:
        mod = importlib.import_module(name)
    except Exception:
        return False
    if name == "launch":
        return hasattr(mod, "LaunchDescription")
    return True


def collect() -> dict[str, Any]:
    report: dict[str, Any] = {
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch": _torch_info(),
        "tt_kernel": _kernel_info(),
        "ros": _ros_info(),
        "mujoco": _version("mujoco"),
        "gymnasium": _version("gymnasium"),
        "minari": _version("minari"),
        "rosbags": _version("rosbags"),
        "safetensors": _version("safetensors"),
        "MUJOCO_GL": os.environ.get("MUJOCO_GL", "<unset>"),
    }
    return report


def _problems(r: dict[str, Any]) -> list[str]:
    out = []
    if not r["torch"].get("ok"):
        out.append("torch is missing: run `make setup` (installs torch==2.13.0, the CPU build)")
    if r["torch"].get("ok") and not r["tt_kernel"].get("ok"):
        out.append(f"the fused C planner kernel is unavailable ({r['tt_kernel'].get('error')}): TT planning on CPU "
                   "falls back to the ~1.7x slower torch decoder (needs a C compiler: apt-get install gcc)")
    if not r["ros"].get("rclpy"):
        out.append("rclpy does not import: run `make setup` (installs the ros-* wheels) or source your ROS 2 install")
    env = r["ros"]["env"]
    if env["ROS_AUTOMATIC_DISCOVERY_RANGE"] != "LOCALHOST":
        out.append("ROS_AUTOMATIC_DISCOVERY_RANGE is not LOCALHOST: DDS discovery may leave this machine; "
                   "`source scripts/ros_env.sh` (our commands set it themselves)")
    if env["ROS_DOMAIN_ID"] in ("<unset>", "0"):
        out.append("ROS_DOMAIN_ID is unset/0: concurrent runs share a graph; `source scripts/ros_env.sh`")
    for mod in ("mujoco", "gymnasium"):
        if r[mod] is None:
            out.append(f"{mod} is missing: run `make setup`")
    return out


def run(args: argparse.Namespace) -> int:
    report = collect()
    report["problems"] = _problems(report)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    t, ros = report["torch"], report["ros"]
    lines = [
        f"python       {report['python']} ({report['executable']})",
        f"platform     {report['platform']}, {report['cpus']} CPUs",
        (f"torch        {t['version']}, device {t['default_device']}"
         + (f" ({', '.join(t.get('devices', []))})" if t.get("devices") else " (no CUDA)")
         + f", {t['threads']} threads") if t.get("ok") else f"torch        MISSING ({t.get('error')})",
        ("tt kernel    ok (fused C decoder step" + (", AVX2" if report["tt_kernel"].get("avx2") else ", generic C")
         + ")" if report["tt_kernel"].get("ok") else f"tt kernel    unavailable ({report['tt_kernel'].get('error')})"),
        (f"rclpy        ok, RMW {ros['rmw']}, {ros['distro']}" if ros.get("rclpy")
         else f"rclpy        MISSING ({ros.get('rclpy_error')})"),
        "launch_ros   " + ("present" if ros["launch_ros"] else
                           "absent (ros2 launch needs a ROS 2 install; `seqplanner demo` works without it)"),
        "rosbag2_py   " + ("present" if ros["rosbag2_py"] else "absent (bags are read/written with rosbags)"),
        f"mujoco       {report['mujoco'] or 'MISSING'}",
        f"gymnasium    {report['gymnasium'] or 'MISSING'}",
        f"minari       {report['minari'] or 'MISSING'}",
        f"rosbags      {report['rosbags'] or 'MISSING'}",
        "discovery    " + ", ".join(f"{k}={v}" for k, v in ros["env"].items()),
    ]
    print("\n".join(lines))
    if report["problems"]:
        print("\nproblems:")
        for p in report["problems"]:
            print(f"  - {p}")
    else:
        print("\nno problems found")
    return 0
