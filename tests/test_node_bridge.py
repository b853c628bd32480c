"""The MuJoCo sim bridge node on a real rclpy graph: topics, lockstep stepping, episode end, reset service."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("rclpy")
pytest.importorskip("mujoco")

from node_harness import wait_for
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64, Float64MultiArray, String
from std_srvs.srv import Trigger

from ros_seqplanner.nodes.obs_layout import builtin_layout
from ros_seqplanner.nodes.planner_node import COMMAND_QOS, EVENT_QOS, STATE_QOS
from ros_seqplanner.nodes.sim_bridge_node import SimBridgeNode

pytestmark = pytest.mark.ros


def test_lockstep_topics_episode_end_and_reset(graph):
    rec: dict[str, list] = {"js": [], "obs": [], "reward": [], "events": [], "ret": []}
    client = Node("client", context=graph.context)
    client.create_subscription(JointState, "/joint_states", rec["js"].append, STATE_QOS)
    client.create_subscription(Float64MultiArray, "/observation", lambda m: rec["obs"].append(np.array(m.data)),
                               STATE_QOS)
    client.create_subscription(Float64, "/reward", lambda m: rec["reward"].append(m.data), EVENT_QOS)
    client.create_subscription(String, "/episode_events", lambda m: rec["events"].append(json.loads(m.data)),
                               EVENT_QOS)
    client.create_subscription(Float64, "/episode_return", lambda m: rec["ret"].append(m.data), EVENT_QOS)
    cmd = client.create_publisher(Float64MultiArray, "/forward_command_controller/commands", COMMAND_QOS)
    reset = client.create_client(Trigger, "/sim_bridge/reset")
    graph.spin(client)
    bridge = graph.spin(SimBridgeNode(context=graph.context, parameter_overrides=[
        Parameter("max_steps", value=3), Parameter("seed", value=5)]))
    assert wait_for(lambda: bridge.running and len(rec["js"]) > 0, timeout=5.0), "autostart did not start an episode"
    js = rec["js"][-1]
    assert list(js.name) == ["rootx", "rootz", "rooty", "bthigh", "bshin", "bfoot", "fthigh", "fshin", "ffoot"]
    obs, why = builtin_layout("halfcheetah").from_joint_state(js.name, js.position, js.velocity)
    assert why == "" and wait_for(lambda: len(rec["obs"]) > 0)
    np.testing.assert_allclose(obs, rec["obs"][-1], atol=1e-6)
    cmd.publish(Float64MultiArray(data=[np.nan] * 6))  # rejected: no step
    assert wait_for(lambda: bridge.rejected_commands == 1) and bridge.steps == 0
    for k in range(3):
        cmd.publish(Float64MultiArray(data=[0.5] * 6))
        assert wait_for(lambda k=k: bridge.steps == k + 1 or not bridge.running, timeout=3.0)
    assert wait_for(lambda: len(rec["ret"]) == 1 and len(rec["reward"]) == 3, timeout=3.0)
    end = next(e for e in rec["events"] if e["event"] == "episode_end")
    assert end["length"] == 3 and end["truncated"] and end["return"] == pytest.approx(sum(rec["reward"]))
    assert rec["ret"][0] == pytest.approx(end["return"])
    stamps = [m.header.stamp.nanosec for m in rec["js"][-3:]]
    assert stamps == sorted(stamps) and stamps[-1] > 0, "lockstep sim time advances one dt per step"
    cmd.publish(Float64MultiArray(data=[0.5] * 6))  # after the end: ignored
    assert not wait_for(lambda: bridge.steps > 3, timeout=0.2)
    assert reset.wait_for_service(timeout_sec=3.0)
    future = reset.call_async(Trigger.Request())
    assert wait_for(future.done, timeout=3.0) and future.result().success
    assert bridge.episode == 1 and bridge.running and bridge.steps == 0
    assert wait_for(lambda: rec["events"][-1] == {"event": "reset", "episode": 1, "seed": 6})


def test_bridge_steps_in_the_env_action_dtype_like_evaluate(graph):
    """A float64 command is stepped as the env's float32 action, as the in-process evaluator does: rewards
    (HalfCheetah's control cost uses the action as given) are then bit-identical, so a ROS episode of a
    return-conditioned DT follows the in-process one."""
    from ros_seqplanner.sim.envs import make_env

    bridge = SimBridgeNode(context=graph.context, parameter_overrides=[
        Parameter("seed", value=5), Parameter("autostart", value=False)])
    try:
        bridge.start_episode()
        command = np.array([0.1, -0.3, 0.7, 0.123456789, -0.9, 0.33])  # not exactly representable in float32
        bridge.step(command)
        env = make_env("HalfCheetah-v5")
        env.reset(seed=5)
        _, reward, *_ = env.step(command.astype(np.float32))
        assert bridge.ret == reward
        env.reset(seed=5)
        _, reward64, *_ = env.step(command)  # the float64 step the bridge used to take
        assert reward64 != reward
        env.close()
    finally:
        bridge.env.close()
        bridge.destroy_node()
