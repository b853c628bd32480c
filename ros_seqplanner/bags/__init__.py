"""rosbag2 bags: read (MCAP/sqlite3, split, bare storage files), write, turn into datasets; record and
replay in a live graph (``bags.record`` / ``bags.replay``, the only modules here that import rclpy).

Reading never reports success on a message-count mismatch; see :mod:`ros_seqplanner.bags.reader`.
"""

from ros_seqplanner.bags.reader import (
    Bag,
    BagCountMismatchError,
    BagError,
    BagFormatError,
    BagInfo,
    RawMessage,
    TopicInfo,
    open_bag,
)
from ros_seqplanner.bags.to_dataset import AlignmentReport, bag_to_dataset, dataset_to_bag
from ros_seqplanner.bags.writer import BagWriter, default_qos

__all__ = [
    "AlignmentReport",
    "Bag",
    "BagCountMismatchError",
    "BagError",
    "BagFormatError",
    "BagInfo",
    "BagWriter",
    "RawMessage",
    "TopicInfo",
    "bag_to_dataset",
    "dataset_to_bag",
    "default_qos",
    "open_bag",
]
