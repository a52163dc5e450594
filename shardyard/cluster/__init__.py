"""Ray clusters: connect to one, or launch one on this machine.

* :func:`connect` / :func:`disconnect` (:mod:`.connection`): the embedded local Ray by
  default, or a cluster by address, with Ray's token taken from Ray's own settings
  (:mod:`.auth`) and a quick check of the address first (:mod:`.preflight`).
* :class:`LocalCluster` (:mod:`.local`): ``shardyard cluster up/status/down``, a head and
  worker nodes on this machine as separate ``ray start`` processes, with their own token.
* :func:`submit_job` (:mod:`.jobs`): run a script as a Ray Job, with its logs and exit status.

The launch configs for clouds and Kubernetes live in the repository's ``cluster/`` folder.

Example:
    >>> from shardyard.cluster import connect
    >>> callable(connect)
    True
"""

from shardyard.cluster.connection import ClusterInfo, connect, disconnect
from shardyard.cluster.jobs import JobReport, submit_job
from shardyard.cluster.local import ClusterDownError, LocalCluster

__all__ = [
    "ClusterDownError",
    "ClusterInfo",
    "JobReport",
    "LocalCluster",
    "connect",
    "disconnect",
    "submit_job",
]
