"""Read rosbag2 bags (MCAP or sqlite3, split or not, with or without metadata.yaml) without ROS.

:func:`open_bag` accepts a bag directory (``metadata.yaml`` + storage files) or one storage file
(``.mcap`` / ``.db3``). Every open counts the messages it can actually read and compares them with
the count the bag declares; a mismatch is never reported as success.

Why the count check: with ``rosbags`` 0.11.9 a bag *directory* whose metadata.yaml QoS differs from
the QoS stored in the storage file (the rosbag2 ``talker`` test bags) silently yields 0 messages,
because the directory reader matches storage connections on topic, type *and* QoS. When the count
read from the directory differs from ``message_count`` in metadata.yaml we fall back to reading
each storage file directly (and merge split files by timestamp); if that still disagrees, we raise
:class:`BagCountMismatchError`.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from rosbags.interfaces import Connection, MessageDefinitionFormat, Qos
from rosbags.rosbag2 import Reader
from rosbags.rosbag2.errors import ReaderError
from rosbags.rosbag2.metadata import parse_qos
from rosbags.serde import SerdeError
from rosbags.typesys import Stores, get_types_from_idl, get_types_from_msg, get_typestore
from rosbags.typesys.base import TypesysError

log = logging.getLogger(__name__)

STORAGE_SUFFIXES = {".mcap": "mcap", ".db3": "sqlite3"}
SUPPORTED_SERIALIZATION = "cdr"
# The environment's distro; rosbags' LATEST is Kilted too. Message definitions embedded in a bag
# take precedence for types this store lacks or defines differently.
BASE_STORE = Stores.ROS2_KILTED


class BagError(RuntimeError):
    """A bag cannot be read as asked (missing, malformed, unsupported)."""


class BagFormatError(BagError):
    """The bag uses a serialization format or storage this reader does not support."""


class BagCountMismatchError(BagError):
    """The number of messages read differs from the count the bag declares."""


class RawMessage(NamedTuple):
    """One serialized message as stored: topic, type, receive timestamp (ns), CDR bytes."""

    topic: str
    msgtype: str
    timestamp_ns: int
    data: bytes


@dataclass
class TopicInfo:
    """One topic of a bag: name, type, serialization format, declared count and offered QoS."""

    name: str
    msgtype: str
    serialization_format: str = SUPPORTED_SERIALIZATION
    message_count: int = 0
    offered_qos: list[Qos] = field(default_factory=list)
    type_hash: str = ""


@dataclass
class BagInfo:
    """What a bag declares about itself (from metadata.yaml, or the storage file's own summary)."""

    path: Path
    storage: str  # 'mcap' | 'sqlite3'
    files: list[Path]
    topics: dict[str, TopicInfo]
    message_count: int
    start_time_ns: int
    duration_ns: int
    version: int | None = None  # metadata.yaml version; None for a bare storage file
    has_metadata: bool = True
    custom_data: dict[str, str] = field(default_factory=dict)


def _load_metadata(bagdir: Path) -> dict[str, Any]:
    path = bagdir / "metadata.yaml"
    try:
        doc = yaml.safe_load(path.read_text())
        return doc["rosbag2_bagfile_information"]
    except (OSError, yaml.YAMLError) as exc:
        raise BagError(f"cannot read {path}: {exc}") from exc
    except (KeyError, TypeError) as exc:
        raise BagError(f"{path} is not rosbag2 metadata (no 'rosbag2_bagfile_information' mapping)") from exc


def _info_from_metadata(bagdir: Path, meta: dict[str, Any]) -> BagInfo:
    try:
        storage = meta["storage_identifier"]
        files = [bagdir / Path(p).name for p in meta.get("relative_file_paths") or []]
        topics = {}
        for entry in meta.get("topics_with_message_count") or []:
            tm = entry["topic_metadata"]
            topics[tm["name"]] = TopicInfo(
                name=tm["name"], msgtype=tm["type"], serialization_format=tm["serialization_format"],
                message_count=int(entry["message_count"]),
                offered_qos=parse_qos(tm.get("offered_qos_profiles") or []),
                type_hash=tm.get("type_description_hash", "") or "",
            )
        count = int(meta["message_count"])
        return BagInfo(
            path=bagdir, storage=storage, files=files, topics=topics, message_count=count,
            start_time_ns=int(meta["starting_time"]["nanoseconds_since_epoch"]) if count else 0,
            duration_ns=int(meta["duration"]["nanoseconds"]),
            version=int(meta["version"]), has_metadata=True, custom_data=dict(meta.get("custom_data") or {}),
        )
    except (KeyError, TypeError, ValueError, ReaderError) as exc:
        raise BagError(f"invalid metadata.yaml in {bagdir}: {exc!r}") from exc


def _check_serialization(topics: Iterable[TopicInfo], where: Path) -> None:
    bad = sorted({t.serialization_format for t in topics if t.serialization_format != SUPPORTED_SERIALIZATION})
    if bad:
        names = [t.name for t in topics if t.serialization_format != SUPPORTED_SERIALIZATION]
        raise BagFormatError(
            f"{where}: serialization format {bad} is not supported (topics {names}); only "
            f"'{SUPPORTED_SERIALIZATION}' (ROS 2 CDR) bags can be read. Was it recorded with a non-default "
            "serializer (rmw)? Convert it to cdr first."
        )


def _metadata_listing(file: Path) -> dict[str, Any] | None:
    """metadata.yaml next to ``file`` if it lists ``file`` as one of its storage files."""
    if not (file.parent / "metadata.yaml").is_file():
        return None
    try:
        meta = _load_metadata(file.parent)
    except BagError:
        return None
    names = {Path(p).name for p in meta.get("relative_file_paths") or []}
    return meta if file.name in names else None


class Bag:
    """An opened bag: :attr:`info` plus iteration over raw and deserialized messages.

    Use :func:`open_bag` (a context manager) rather than constructing it directly.
    """

    def __init__(self, path: str | Path, *, verify: bool = True) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise BagError(f"bag {self.path} does not exist")
        self._readers: list[Reader] = []
        self._mode = "directory"  # or 'files'
        self.fallback_reason = ""
        if self.path.is_dir():
            if not (self.path / "metadata.yaml").is_file():
                raise BagError(
                    f"{self.path} has no metadata.yaml; pass one of its storage files (.mcap/.db3) instead"
                )
            self.info = _info_from_metadata(self.path, _load_metadata(self.path))
            _check_serialization(self.info.topics.values(), self.path)
            if self.info.storage not in ("mcap", "sqlite3"):
                raise BagFormatError(f"{self.path}: storage '{self.info.storage}' not supported (mcap, sqlite3)")
            missing = [str(f) for f in self.info.files if not f.exists()]
            if missing:
                raise BagError(f"{self.path}: storage files listed in metadata.yaml are missing: {missing}")
        elif self.path.suffix in STORAGE_SUFFIXES:
            self._mode = "files"
            self.info = self._info_from_file(self.path)
        else:
            raise BagError(f"{self.path} is neither a bag directory nor a .mcap/.db3 storage file")
        self._open_readers()
        self._typestore = get_typestore(BASE_STORE)
        self._private_stores: dict[str, Any] = {}
        self.read_count: int | None = None
        try:
            self._register_embedded_types()
            if verify:
                self.verify()
        except BaseException:
            self.close()
            raise

    # -- opening ---------------------------------------------------------------------------------
    def _info_from_file(self, file: Path) -> BagInfo:
        with _reader(file) as r:
            topics = {
                c.topic: TopicInfo(
                    name=c.topic, msgtype=c.msgtype, serialization_format=c.ext.serialization_format,
                    message_count=c.msgcount, offered_qos=list(c.ext.offered_qos_profiles), type_hash=c.digest,
                )
                for c in r.connections
            }
            count, start, duration = r.message_count, r.start_time, r.duration
        info = BagInfo(
            path=file, storage=STORAGE_SUFFIXES[file.suffix], files=[file], topics=topics, message_count=count,
            start_time_ns=start if count else 0, duration_ns=duration if count else 0, has_metadata=False,
        )
        # A storage file that a metadata.yaml lists: that file's declared serialization format and
        # per-file count apply (sqlite3 files of rosbag2's wrong_rmw_test say 'cdr'; metadata does not).
        meta = _metadata_listing(file)
        if meta is not None:
            declared = _info_from_metadata(file.parent, meta)
            for name, t in declared.topics.items():
                if name in info.topics:
                    info.topics[name].serialization_format = t.serialization_format
            per_file = {Path(f.get("path", "")).name: f for f in meta.get("files") or []}
            if file.name in per_file:
                info.message_count = int(per_file[file.name]["message_count"])
            elif len(declared.files) == 1:
                info.message_count = declared.message_count
        _check_serialization(info.topics.values(), file)
        return info

    def _open_readers(self) -> None:
        self.close()
        targets = [self.path] if self._mode == "directory" else list(self.info.files)
        try:
            for t in targets:
                r = _reader(t)
                r.open()
                self._readers.append(r)
        except (ReaderError, OSError) as exc:
            self.close()
            raise BagError(f"cannot open {self.path}: {exc}") from exc

    def _register_embedded_types(self) -> None:
        """Add the bag's embedded definitions for types the base store lacks.

        For types the base store has, its definition wins (the sqlite3 talker fixture embeds a
        truncated ``rcl_interfaces/msg/Log`` definition); a differing embedded one is kept as an
        alternative tried only when the base definition fails to deserialize a message.
        """
        for r in self._readers:
            for c in r.connections:
                if c.msgdef.format == MessageDefinitionFormat.NONE or not c.msgdef.data:
                    continue
                typs = _parse_msgdef(c)
                if not typs:
                    continue
                new = {k: v for k, v in typs.items() if k not in self._typestore.fielddefs}
                if new:
                    try:
                        self._typestore.register(new)
                    except TypesysError as exc:
                        log.warning("cannot register embedded definition of %s: %s", c.msgtype, exc)
                if c.msgtype not in new and c.msgtype not in self._private_stores:
                    try:
                        private = get_typestore(Stores.EMPTY)
                        private.register(typs)
                        self._private_stores[c.msgtype] = private
                    except TypesysError:
                        pass

    def verify(self) -> int:
        """Count readable messages; fall back to per-file reading on a mismatch; raise if still off."""
        n = sum(1 for _ in self._iter_raw(None))
        if n != self.info.message_count and self._mode == "directory":
            self.fallback_reason = (
                f"reading the bag directory gave {n} messages but metadata.yaml declares "
                f"{self.info.message_count}; read the storage files directly instead"
            )
            log.warning("%s: %s", self.path, self.fallback_reason)
            self._mode = "files"
            self._open_readers()
            n = sum(1 for _ in self._iter_raw(None))
        if n != self.info.message_count:
            raise BagCountMismatchError(
                f"{self.path}: read {n} messages but the bag declares {self.info.message_count}; "
                "the bag is truncated, still being written, or its metadata is inconsistent "
                "(try reading its storage file directly, or `ros2 bag reindex`)"
            )
        self.read_count = n
        return n

    # -- reading ---------------------------------------------------------------------------------
    def _iter_raw(self, topics: set[str] | None) -> Iterator[RawMessage]:
        streams = []
        for r in self._readers:
            conns = [c for c in r.connections if topics is None or c.topic in topics]
            if conns:
                streams.append(
                    RawMessage(c.topic, c.msgtype, ts, bytes(data)) for c, ts, data in r.messages(conns)
                )
        if len(streams) == 1:
            yield from streams[0]
        else:  # split bag read file by file: merge into one time-ordered stream
            yield from heapq.merge(*streams, key=lambda m: m.timestamp_ns)

    def raw_messages(self, topics: Iterable[str] | None = None) -> Iterator[RawMessage]:
        """Time-ordered (topic, msgtype, timestamp_ns, CDR bytes), optionally only some topics."""
        wanted = None if topics is None else set(topics)
        if wanted is not None and (unknown := wanted - set(self.info.topics)):
            raise BagError(f"{self.path}: topics {sorted(unknown)} not in bag; it has {sorted(self.info.topics)}")
        return self._iter_raw(wanted)

    def deserialize(self, msg: RawMessage) -> Any:
        """CDR bytes -> rosbags message object (dataclass with the ROS field names)."""
        stores = [s for s in (self._typestore, self._private_stores.get(msg.msgtype)) if s is not None]
        stores = [s for s in stores if msg.msgtype in s.fielddefs]
        if not stores:
            raise BagError(
                f"no definition for {msg.msgtype}: the bag embeds none and ROS 2 {BASE_STORE.value} lacks it"
            )
        errors = []
        for store in stores:
            try:
                return store.deserialize_cdr(msg.data, msg.msgtype)
            except (SerdeError, ValueError, IndexError, struct.error) as exc:
                errors.append(repr(exc))
        raise BagError(f"cannot deserialize a {msg.msgtype} message on {msg.topic}: {'; '.join(errors)}")

    def messages(self, topics: Iterable[str] | None = None) -> Iterator[tuple[RawMessage, Any]]:
        """Time-ordered (raw message, deserialized message) pairs."""
        for raw in self.raw_messages(topics):
            yield raw, self.deserialize(raw)

    def topic_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(self.info.topics, 0)
        for m in self._iter_raw(None):
            counts[m.topic] = counts.get(m.topic, 0) + 1
        return counts

    # -- lifetime --------------------------------------------------------------------------------
    def close(self) -> None:
        readers, self._readers = self._readers, []
        for r in readers:
            with contextlib.suppress(ReaderError):
                r.close()

    def __enter__(self) -> Bag:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _reader(target: Path) -> Reader:
    try:
        return Reader(target)
    except (ReaderError, FileNotFoundError) as exc:
        raise BagError(f"cannot open {target}: {exc}") from exc


def _parse_msgdef(conn: Connection) -> dict[str, Any] | None:
    try:
        if conn.msgdef.format == MessageDefinitionFormat.MSG:
            return get_types_from_msg(conn.msgdef.data, conn.msgtype)
        sep = "=" * 80 + "\n"
        typs: dict[str, Any] = {}
        if conn.msgdef.data.startswith(f"{sep}IDL: "):
            for block in conn.msgdef.data.split(sep)[1:]:
                typs.update(get_types_from_idl(block.split("\n", 1)[1]))
        else:
            typs.update(get_types_from_idl(conn.msgdef.data))
        return typs
    except Exception as exc:  # a broken embedded definition: fall back to the base store
        log.warning("cannot parse embedded definition of %s: %s", conn.msgtype, exc)
        return None


def open_bag(path: str | Path, *, verify: bool = True) -> Bag:
    """Open a bag directory or a single .mcap/.db3 file. ``verify`` counts messages (see module doc)."""
    return Bag(path, verify=verify)


def find_storage_file(path: str | Path) -> Path:
    """The single storage file of a one-file bag directory (or ``path`` itself if it is one)."""
    p = Path(path)
    if p.is_file():
        return p
    files = sorted(x for x in p.iterdir() if x.suffix in STORAGE_SUFFIXES)
    if len(files) != 1:
        raise BagError(f"{p}: expected one storage file, found {[f.name for f in files]}")
    return files[0]
