"""MuJoCo side: env factory + joint layout (envs), scenario files (scenarios), SAC behaviour policies
(behaviour), offline dataset collection (collect) and in-process closed-loop evaluation (evaluate)."""
