"""The first real ROS 2 tests: two rclpy nodes exchange messages over DDS on loopback, and a
lifecycle node goes through its transitions. No mocks: a real graph in a per-test context."""

from __future__ import annotations

import os
import time

import pytest

rclpy = pytest.importorskip("rclpy")

from lifecycle_msgs.msg import State  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import Float64MultiArray  # noqa: E402

from ros_seqplanner.spinning import SpinThread  # noqa: E402

pytestmark = pytest.mark.ros


def test_discovery_is_loopback_only_and_domain_is_random():
    assert os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    assert 1 <= int(os.environ["ROS_DOMAIN_ID"]) <= 101


def _spin_until(executor, predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.05)
        if predicate():
            return True
    return False


def test_two_nodes_exchange_jointstate_and_float64multiarray(ros_context):
    talker = rclpy.create_node("frame_talker", context=ros_context)
    listener = rclpy.create_node("frame_listener", context=ros_context)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(talker)
    executor.add_node(listener)
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    got_js: list[JointState] = []
    got_arr: list[Float64MultiArray] = []
    listener.create_subscription(JointState, "frame/joint_states", got_js.append, qos)
    listener.create_subscription(Float64MultiArray, "frame/commands", got_arr.append, qos)
    pub_js = talker.create_publisher(JointState, "frame/joint_states", qos)
    pub_arr = talker.create_publisher(Float64MultiArray, "frame/commands", qos)
    try:
        # Wait for DDS discovery (over loopback) before publishing.
        assert _spin_until(executor, lambda: pub_js.get_subscription_count() == 1
                           and pub_arr.get_subscription_count() == 1, 10.0), "no discovery on loopback"
        js = JointState(name=["bthigh", "bshin"], position=[0.1, -0.2], velocity=[1.5, 2.5])
        js.header.stamp = talker.get_clock().now().to_msg()
        pub_js.publish(js)
        pub_arr.publish(Float64MultiArray(data=[0.25, -1.0, 3.5]))
        assert _spin_until(executor, lambda: got_js and got_arr, 10.0)
        assert list(got_js[0].name) == ["bthigh", "bshin"]
        assert list(got_js[0].position) == pytest.approx([0.1, -0.2])
        assert list(got_js[0].velocity) == pytest.approx([1.5, 2.5])
        assert list(got_arr[0].data) == pytest.approx([0.25, -1.0, 3.5])
    finally:
        executor.shutdown()
        talker.destroy_node()
        listener.destroy_node()


class _RecordingLifecycleNode(LifecycleNode):
    """Creates its publisher in on_configure and frees it in on_cleanup (lifecycle_py style)."""

    def __init__(self, context):
        super().__init__("frame_lifecycle", context=context)
        self.pub = None
        self.transitions: list[str] = []

    def on_configure(self, state):
        self.pub = self.create_lifecycle_publisher(Float64MultiArray, "frame/lc_out", 1)
        self.transitions.append("configure")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state):
        self.transitions.append("activate")
        return super().on_activate(state)

    def on_deactivate(self, state):
        self.transitions.append("deactivate")
        return super().on_deactivate(state)

    def on_cleanup(self, state):
        self.destroy_lifecycle_publisher(self.pub)
        self.pub = None
        self.transitions.append("cleanup")
        return TransitionCallbackReturn.SUCCESS


def test_lifecycle_node_configure_activate_deactivate_cleanup(ros_context):
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState, GetState

    node = _RecordingLifecycleNode(ros_context)
    client_node = rclpy.create_node("frame_lc_client", context=ros_context)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(node)
    executor.add_node(client_node)
    spinner = SpinThread(executor).start()
    change = client_node.create_client(ChangeState, "frame_lifecycle/change_state")
    get = client_node.create_client(GetState, "frame_lifecycle/get_state")
    try:
        assert change.wait_for_service(timeout_sec=10.0) and get.wait_for_service(timeout_sec=10.0)

        def state_id() -> int:
            fut = get.call_async(GetState.Request())
            deadline = time.monotonic() + 5
            while not fut.done() and time.monotonic() < deadline:
                time.sleep(0.01)
            return fut.result().current_state.id

        def transition(tid: int) -> bool:
            fut = change.call_async(ChangeState.Request(transition=Transition(id=tid)))
            deadline = time.monotonic() + 5
            while not fut.done() and time.monotonic() < deadline:
                time.sleep(0.01)
            return fut.result().success

        assert state_id() == State.PRIMARY_STATE_UNCONFIGURED
        assert transition(Transition.TRANSITION_CONFIGURE)
        assert state_id() == State.PRIMARY_STATE_INACTIVE and node.pub is not None
        assert transition(Transition.TRANSITION_ACTIVATE)
        assert state_id() == State.PRIMARY_STATE_ACTIVE and node.pub.is_activated
        assert transition(Transition.TRANSITION_DEACTIVATE)
        assert state_id() == State.PRIMARY_STATE_INACTIVE
        assert transition(Transition.TRANSITION_CLEANUP)
        assert state_id() == State.PRIMARY_STATE_UNCONFIGURED and node.pub is None
        # An invalid transition from UNCONFIGURED is refused, not crashed on.
        assert not transition(Transition.TRANSITION_ACTIVATE)
        assert node.transitions == ["configure", "activate", "deactivate", "cleanup"]
    finally:
        spinner.stop(timeout_s=5.0)
        node.destroy_node()
        client_node.destroy_node()


def test_spin_thread_stops_before_the_executor_shuts_down(ros_context) -> None:
    """SpinThread: callbacks run while it spins; stop() ends the spin and joins the thread before shutting the
    executor down (rclpy's shutdown alone does not wait for a spinning thread), and is safe to repeat."""
    node = rclpy.create_node("spin_thread_probe", context=ros_context)
    ticks = []
    node.create_timer(0.01, lambda: ticks.append(time.monotonic()))
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(node)
    spinner = SpinThread(executor).start()
    try:
        deadline = time.monotonic() + 5.0
        while len(ticks) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(ticks) >= 3
    finally:
        spinner.stop(timeout_s=5.0)
    assert not spinner.thread.is_alive()
    n = len(ticks)
    time.sleep(0.05)
    assert len(ticks) == n, "no callback after stop()"
    spinner.stop(timeout_s=1.0)  # again: no error
    node.destroy_node()
