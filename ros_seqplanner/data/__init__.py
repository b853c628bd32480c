"""Offline data: episode container, value-to-go, dataset I/O (Minari, D4RL-HDF5), normalised scores."""

from ros_seqplanner.data.episodes import Episode, EpisodeDataset
from ros_seqplanner.data.scores import REF_SCORES, normalized_score

__all__ = ["REF_SCORES", "Episode", "EpisodeDataset", "normalized_score"]
