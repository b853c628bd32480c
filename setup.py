"""ament_python package ``ros_seqplanner``; also pip-installable into a plain virtualenv.

``colcon build`` uses ``setup.cfg``'s ``[install]`` section to put the console scripts in
``lib/ros_seqplanner`` (where ``ros2 run`` and launch look), and ``data_files`` installs the launch
files, configs, models and sim assets into ``share/ros_seqplanner``.
"""

from glob import glob
from pathlib import Path

from setuptools import find_packages, setup

package_name = "ros_seqplanner"
HERE = Path(__file__).parent


def tree(folder: str, patterns: tuple[str, ...]) -> list[tuple[str, list[str]]]:
    """data_files entries that mirror ``folder`` (recursively) under share/<package>/<folder>."""
    by_dir: dict[str, list[str]] = {}
    for pattern in patterns:
        for f in sorted(glob(f"{folder}/**/{pattern}", recursive=True)):
            by_dir.setdefault(str(Path(f).parent), []).append(f)
    return [(f"share/{package_name}/{d}", files) for d, files in sorted(by_dir.items())]


setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["tests", "tests.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{package_name}"]),
        (f"share/{package_name}", ["package.xml"]),
        (f"share/{package_name}/launch", glob("launch/*.launch.py")),
        *tree("config", ("*.yaml",)),
        *tree("models", ("*.json", "*.safetensors", "*.md", "*.yaml", "*.zip")),
        *tree("sim", ("*.yaml", "*.xml")),
    ],
    install_requires=["setuptools", "numpy", "safetensors", "pyyaml", "tqdm"],
    package_data={"ros_seqplanner.planning": ["_tt_kernel.c"]},  # built on first use (planning/ckernel.py)
    zip_safe=False,
    maintainer="ros_seqplanner developers",
    maintainer_email="dev@ros-seqplanner.invalid",
    description="Trajectory Transformer / Decision Transformer planners as a ROS 2 control package",
    license="Apache-2.0",
    python_requires=">=3.10",
    entry_points={
        "console_scripts": [
            "seqplanner = ros_seqplanner.cli:main",
            "seqplanner_node = ros_seqplanner.nodes.planner_node:main",
            "sim_bridge_node = ros_seqplanner.nodes.sim_bridge_node:main",
        ],
    },
)
