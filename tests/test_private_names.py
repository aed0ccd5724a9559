"""Every private name of amqtt and paho our code relies on is derived from our source and pinned.

amqtt is used only in ``pm/broker/amqtt/`` and paho only in ``pm/mqtt/``; both are pinned to an
exact version because our code overrides, calls and reads their private names. This test does
not trust a hand-written list of those names: it reads our source (``ast``) and derives them:

* a private name imported from the library (``from amqtt.x import _y``);
* in a class deriving from a library class (directly, or through classes of ours): every
  method we define that a library base also defines (an override, public or private: it
  replaces library code the library's own call sites still rely on), and every private name
  read or written on ``self``, ``cls`` or ``super()`` that a library base defines;
* any other ``<expression>._name`` that our own code does not define but the library does
  (``broker._servers``, ``plugins_manager._is_topic_filtering_enabled``);
* a string our code matches library output against (``.startswith("...")``, ``.endswith``)
  that appears in the library's source (a log message a filter recognises).

Each use becomes pins on the library's *source*: a method by its text, an attribute by every
line of its class that mentions it, an override also by every library function that calls it
(our override must keep fitting those call sites), a matched text by every library function
that contains it. The test fails when any pinned source changes (re-read it, adapt our code,
update the digest) and when our code uses a private name that has no pin (the failure prints
the entries to add once you have checked them). Adding an override in ``pm/mqtt`` or
``pm/broker/amqtt`` therefore needs nothing but the new digests below.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import inspect
import re
from collections import defaultdict
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Library:
    """A pinned third-party package and the one place of ours allowed to use its internals."""

    package: str  # import name, e.g. "amqtt" or "paho.mqtt"
    distribution: str
    version: str
    ours: str  # the directory of our code that may touch its private names


LIBRARIES = (
    Library("amqtt", "amqtt", "0.12.1", "pm/broker/amqtt"),
    Library("paho.mqtt", "paho-mqtt", "2.2.0", "pm/mqtt"),
)

# sha256 (first 16 hex digits) of the library source each derived use rests on (see the module
# docstring for what is hashed). A mismatch means the library changed: re-read that source,
# carry the change into our code, then update the digest.
PINNED: dict[str, dict[str, str]] = {
    "amqtt": {
        "amqtt.adapters:ReaderAdapter.feed_eof": "fa376a147c7b03bf",
        "amqtt.adapters:ReaderAdapter.read": "df37082e4d5c0561",
        "amqtt.adapters:StreamWriterAdapter._writer": "a4210c7dd24c77ae",
        "amqtt.adapters:StreamWriterAdapter.close": "9f228a1f968d964e",
        "amqtt.adapters:StreamWriterAdapter.write": "a204e5a548e08184",
        "amqtt.broker:Broker._authenticate": "4d7db8cc6fe2c3f6",
        "amqtt.broker:Broker._broadcast_loop": "371196a6242c2e35",
        "amqtt.broker:Broker._broadcast_queue": "2741302510426b86",
        "amqtt.broker:Broker._cleanup_session": "530ae891d9f536cc",
        "amqtt.broker:Broker._client_connected": "432b724bc4fb7946",
        "amqtt.broker:Broker._client_message_loop": "916c4647c3389918",
        "amqtt.broker:Broker._create_server_instance": "3925f48239680074",
        "amqtt.broker:Broker._del_all_subscriptions": "615579810f47d1e0",
        "amqtt.broker:Broker._del_subscription": "415f349273b0552d",
        "amqtt.broker:Broker._delete_session": "a8333dded50648a7",
        "amqtt.broker:Broker._get_handler": "169908c149fded36",
        "amqtt.broker:Broker._handle_client_session": "8b1b52a03df9daf5",
        "amqtt.broker:Broker._handle_disconnect": "8c3b8702f3567055",
        "amqtt.broker:Broker._handle_message_delivery": "89727723da550bed",
        "amqtt.broker:Broker._handle_subscription": "3dae18afa195209e",
        "amqtt.broker:Broker._handle_unsubscription": "29253b1b63036d7a",
        "amqtt.broker:Broker._initialize_client_session": "5dd89158bbe46266",
        "amqtt.broker:Broker._matches": "c03b25d98f4c0a34",
        "amqtt.broker:Broker._publish_retained_messages_for_subscription": "d6ad257821ba29ef",
        "amqtt.broker:Broker._publish_session_retained_messages": "78cd66096c935c1f",
        "amqtt.broker:Broker._retain_broadcast_message": "884c193d6731d048",
        "amqtt.broker:Broker._retained_messages": "b963bc0cff6f017e",
        "amqtt.broker:Broker._run_broadcast": "e852128b3e38e04a",
        "amqtt.broker:Broker._servers": "01178dca7d7c630c",
        "amqtt.broker:Broker._session_monitor": "5091fa20cdfdc203",
        "amqtt.broker:Broker._sessions": "db6e28ea4e6fa327",
        "amqtt.broker:Broker._start_listeners": "5ac2d716d33babb4",
        "amqtt.broker:Broker._subscriptions": "0b3afa84871aa708",
        "amqtt.broker:Broker._topic_filtering": "9259ae5e1dd3e20d",
        "amqtt.broker:Broker.add_subscription": "07757b63113c395e",
        "amqtt.broker:Broker.start": "bd1c165101f6fcbb",
        "amqtt.broker:Broker.stream_connected": "d1c68240cb49f94a",
        "amqtt.contrib.auth_db.managers:TopicManager.__aexit__": "25cf7885dbb18116",
        "amqtt.contrib.auth_db.managers:UserManager.__aexit__": "25cf7885dbb18116",
        "amqtt.mqtt.protocol.broker_handler:BrokerProtocolHandler._pending_subscriptions": "ca08d7de79be9a17",  # noqa: E501 - a qualified name
        "amqtt.mqtt.protocol.broker_handler:BrokerProtocolHandler._pending_unsubscriptions": "b35706cd6acc3002",  # noqa: E501 - a qualified name
        "amqtt.mqtt.protocol.broker_handler:BrokerProtocolHandler.handle_pingreq": "de126279f40d7031",  # noqa: E501 - a qualified name
        "amqtt.mqtt.protocol.broker_handler:BrokerProtocolHandler.handle_read_timeout": "ffd79f12457f41e1",  # noqa: E501 - a qualified name
        "amqtt.mqtt.protocol.broker_handler:BrokerProtocolHandler.mqtt_acknowledge_subscription": "002366e76dc0b16a",  # noqa: E501 - a qualified name
        "amqtt.mqtt.protocol.broker_handler:BrokerProtocolHandler.mqtt_acknowledge_unsubscription": "ff00926898462a07",  # noqa: E501 - a qualified name
        "amqtt.mqtt.protocol.broker_handler:BrokerProtocolHandler.mqtt_connack_authorize": "4e64256ea1f5c73c",  # noqa: E501 - a qualified name
        "amqtt.mqtt.protocol.client_handler:ClientProtocolHandler.mqtt_connect": "1397b84b17cc020d",
        "amqtt.mqtt.protocol.client_handler:ClientProtocolHandler.mqtt_disconnect": "efeb095a21d0e717",  # noqa: E501 - a qualified name
        "amqtt.mqtt.protocol.client_handler:ClientProtocolHandler.mqtt_ping": "47de68712c587118",
        "amqtt.mqtt.protocol.client_handler:ClientProtocolHandler.mqtt_subscribe": "c4a8bdfad5ffd658",  # noqa: E501 - a qualified name
        "amqtt.mqtt.protocol.client_handler:ClientProtocolHandler.mqtt_unsubscribe": "ac93c4d9267188b3",  # noqa: E501 - a qualified name
        "amqtt.mqtt.protocol.handler:ProtocolHandler._handle_message_flow": "610dae5c5d7f3b8d",
        "amqtt.mqtt.protocol.handler:ProtocolHandler._handle_qos0_message_flow": "e7a88a9f360ff322",
        "amqtt.mqtt.protocol.handler:ProtocolHandler._handle_qos1_message_flow": "944e6a8130c70daf",
        "amqtt.mqtt.protocol.handler:ProtocolHandler._handle_qos2_message_flow": "f2d96f1fc4eca34f",
        "amqtt.mqtt.protocol.handler:ProtocolHandler._puback_waiters": "152406d8471b6ae2",
        "amqtt.mqtt.protocol.handler:ProtocolHandler._reader_loop": "93f3b8e4483040d0",
        "amqtt.mqtt.protocol.handler:ProtocolHandler._reader_ready": "65e570baacdee7b0",
        "amqtt.mqtt.protocol.handler:ProtocolHandler._reader_stopped": "5fe17001e9efeea8",
        "amqtt.mqtt.protocol.handler:ProtocolHandler._send_packet": "9f0ae4e325319652",
        "amqtt.mqtt.protocol.handler:ProtocolHandler._write_lock": "59a1a38efe3708de",
        "amqtt.mqtt.protocol.handler:ProtocolHandler.handle_puback": "7d8487deb2d589ee",
        "amqtt.mqtt.protocol.handler:ProtocolHandler.start": "684c58c16be73a2d",
        "amqtt.plugins.base:BaseAuthPlugin.authenticate": "474dbca3f34cfbdd",
        "amqtt.plugins.base:BaseTopicPlugin.topic_filtering": "001653f7e521a4b7",
        "amqtt.plugins.manager:PluginManager._event_plugin_callbacks": "cf0ecea3307f7332",
        "amqtt.plugins.manager:PluginManager._is_topic_filtering_enabled": "4db198cf0eca0772",
    },
    "paho.mqtt": {
        "paho.mqtt.client:Client._call_socket_register_write": "bb825cf9532d2745",
        "paho.mqtt.client:Client._call_socket_unregister_write": "0759a544e634762b",
        "paho.mqtt.client:Client._do_on_publish": "5bbcad6f9447107a",
        "paho.mqtt.client:Client._handle_connack": "39267140212c8b5f",
        "paho.mqtt.client:Client._handle_on_message": "8ccc46fdb090aead",
        "paho.mqtt.client:Client._handle_pubackcomp": "04d39ba283b1f3be",
        "paho.mqtt.client:Client._handle_publish": "1bbaa3ef0e3afc6d",
        "paho.mqtt.client:Client._handle_pubrel": "62a366a76a29d6c7",
        "paho.mqtt.client:Client._in_callback_mutex": "44821718d9ab6c93",
        "paho.mqtt.client:Client._in_packet": "31574ab70d450cfa",
        "paho.mqtt.client:Client._inflight_messages": "87d9640c402e85cc",
        "paho.mqtt.client:Client._keepalive": "061b32fb2a4ce5ed",
        "paho.mqtt.client:Client._last_bytes_received": "767fbded48a22ac0",
        "paho.mqtt.client:Client._last_msg_out": "ec5093823809895e",
        "paho.mqtt.client:Client._loop": "7372a4c2fc81b7f4",
        "paho.mqtt.client:Client._loop_rc_handle": "ee5ad3b7849433a4",
        "paho.mqtt.client:Client._manual_ack": "3a825110f98a8f5f",
        "paho.mqtt.client:Client._max_inflight_messages": "51127ffba95829e9",
        "paho.mqtt.client:Client._mid_generate": "55fc1e4a5f1584fb",
        "paho.mqtt.client:Client._out_message_mutex": "245d9e002f43a9e9",
        "paho.mqtt.client:Client._out_messages": "fc37abc5eb3647f2",
        "paho.mqtt.client:Client._out_packet": "74f50eeb77901e3c",
        "paho.mqtt.client:Client._packet_handle": "ac4c129ed409db42",
        "paho.mqtt.client:Client._packet_queue": "e298fa9ab31e5f79",
        "paho.mqtt.client:Client._packet_read": "bbe32d8af1e37955",
        "paho.mqtt.client:Client._ping_t": "5fbd01bc3a6750b4",
        "paho.mqtt.client:Client._protocol": "fa2e71a2d99494b0",
        "paho.mqtt.client:Client._send_command_with_mid": "1a771678b66dc9e4",
        "paho.mqtt.client:Client._send_connect": "64e5d20b72bd6aa8",
        "paho.mqtt.client:Client._send_disconnect": "6e18f9c7abb96996",
        "paho.mqtt.client:Client._send_publish": "4edd21dd50f58a28",
        "paho.mqtt.client:Client._send_simple_command": "2258d00d9b1617b7",
        "paho.mqtt.client:Client._send_subscribe": "2831369857987f0d",
        "paho.mqtt.client:Client._send_unsubscribe": "7a6ce455d3e039a7",
        "paho.mqtt.client:Client._sock": "d4063615fb9a11c1",
        "paho.mqtt.client:Client._sock_recv": "c3b9043a46dd81b7",
        "paho.mqtt.client:Client._update_inflight": "d11feb21cf855b12",
        "paho.mqtt.client:Client._userdata": "a36c5f7a9e657c40",
        "paho.mqtt.client:Client.loop_read": "4fa11ca2d451dbec",
        "paho.mqtt.client:Client.loop_write": "57c360e5ae749fd9",
        "paho.mqtt.client:Client.message_callback_add": "ccabe4ba3af0ef9d",
        "paho.mqtt.client:Client.topic_callback": "18523735ce3d9af1",
        "paho.mqtt.client:Client.want_write": "dc5eaf22e9d3a4ca",
    },
}


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# -- the library's side: where each private name is defined ---------------------------------


@dataclass
class LibraryClass:
    key: str  # "module:Class"
    source: str
    methods: dict[str, str] = field(default_factory=dict)  # name -> source of the def
    attributes: set[str] = field(default_factory=set)  # self._x / class-level _x assignments
    calls: dict[str, set[str]] = field(default_factory=dict)  # method -> self.<names> called


@dataclass
class LibraryIndex:
    classes: dict[str, LibraryClass] = field(default_factory=dict)
    module_names: dict[str, dict[str, str]] = field(default_factory=dict)  # module -> name -> src
    functions: dict[str, str] = field(default_factory=dict)  # "module:qualname" -> source

    def defining(self, name: str) -> list[LibraryClass]:
        return [
            cls for cls in self.classes.values() if name in cls.methods or name in cls.attributes
        ]


def _module_name(path: Path, top: Path, package: str) -> str:
    parts = path.relative_to(top).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join((package, *parts))


@cache
def library_index(package: str) -> LibraryIndex:
    top = Path(importlib.import_module(package).__file__ or "").parent
    index = LibraryIndex()
    for path in sorted(top.rglob("*.py")):
        module = _module_name(path, top, package)
        text = path.read_text()
        lines = text.splitlines(keepends=True)
        tree = ast.parse(text)
        names = index.module_names.setdefault(module, {})
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names[node.name] = _lines_of(lines, node)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                    if isinstance(target, ast.Name):
                        names[target.id] = _lines_of(lines, node)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                index.functions[f"{module}:{node.name}"] = names[node.name]
            if isinstance(node, ast.ClassDef):
                _index_class(index, module, node, lines)
    return index


def _lines_of(lines: list[str], node: ast.stmt) -> str:
    """The whole source lines of a definition (``ast.get_source_segment`` re-splits the file
    at every call: 30 s for amqtt)."""
    return "".join(lines[node.lineno - 1 : node.end_lineno])


def _index_class(index: LibraryIndex, module: str, node: ast.ClassDef, lines: list[str]) -> None:
    cls = LibraryClass(f"{module}:{node.name}", _lines_of(lines, node))
    index.classes[cls.key] = cls
    for item in node.body:
        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
            source = _lines_of(lines, item)
            cls.methods[item.name] = source
            index.functions[f"{cls.key}.{item.name}"] = source
            cls.calls[item.name] = {
                call.func.attr
                for call in ast.walk(item)
                if isinstance(call, ast.Call)
                and isinstance(call.func, ast.Attribute)
                and isinstance(call.func.value, ast.Name)
                and call.func.value.id == "self"
            }
        elif isinstance(item, (ast.Assign, ast.AnnAssign)):
            for target in item.targets if isinstance(item, ast.Assign) else [item.target]:
                if isinstance(target, ast.Name):
                    cls.attributes.add(target.id)
    for sub in ast.walk(node):
        targets: list[ast.expr] = []
        if isinstance(sub, ast.Assign):
            targets = sub.targets
        elif isinstance(sub, (ast.AnnAssign, ast.AugAssign)):
            targets = [sub.target]
        for target in targets:
            if (
                isinstance(target, ast.Attribute)
                and isinstance(target.value, ast.Name)
                and target.value.id == "self"
            ):
                cls.attributes.add(target.attr)


def _attribute_lines(cls: LibraryClass, name: str) -> str:
    pattern = re.compile(rf"\.{re.escape(name)}\b|^\s*{re.escape(name)}\s*[:=]")
    return "\n".join(line.strip() for line in cls.source.splitlines() if pattern.search(line))


# -- our side: what our source uses ----------------------------------------------------------


@dataclass
class Use:
    pins: dict[str, str]  # pin key -> digest of the library source it rests on
    where: str  # our file:line, for the failure message


def _imported_names(tree: ast.Module, package: str) -> dict[str, str]:
    """Local name -> fully qualified name, from the module's imports (relative ones resolved
    against ``package``, the module's own)."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                names[alias.asname or alias.name.split(".")[0]] = (
                    alias.name if alias.asname else alias.name.split(".")[0]
                )
        elif isinstance(node, ast.ImportFrom) and node.module:
            module = node.module
            if node.level:
                parts = package.split(".")
                module = ".".join([*parts[: len(parts) - node.level + 1], module])
            for alias in node.names:
                names[alias.asname or alias.name] = f"{module}.{alias.name}"
    return names


def _package(path: Path) -> str:
    """The package a module of ours belongs to, e.g. ``pm.broker.amqtt``."""
    return ".".join(path.relative_to(ROOT).parent.parts)


def _qualified(expr: ast.expr, imported: dict[str, str]) -> str | None:
    if isinstance(expr, ast.Name):
        return imported.get(expr.id)
    if isinstance(expr, ast.Attribute):
        base = _qualified(expr.value, imported)
        return None if base is None else f"{base}.{expr.attr}"
    return None


def _library_mro(qualified: str, library: Library) -> list[LibraryClass]:
    """The library classes in the MRO of the class ``qualified`` (imported for real)."""
    module_name, _, class_name = qualified.rpartition(".")
    base = getattr(importlib.import_module(module_name), class_name)
    index = library_index(library.package)
    found = []
    for cls in base.__mro__:
        key = f"{cls.__module__}:{cls.__qualname__}"
        if key in index.classes:
            found.append(index.classes[key])
    return found


def _method_pins(cls: LibraryClass, name: str, index: LibraryIndex) -> dict[str, str]:
    pins = {f"{cls.key}.{name}": _digest(cls.methods[name])}
    # An override must keep fitting every library call site of the method it replaces.
    for other in index.classes.values():
        for method, called in other.calls.items():
            if name in called:
                pins[f"{other.key}.{method}"] = _digest(other.methods[method])
    return pins


def _name_pins(classes: list[LibraryClass], name: str, override: bool) -> dict[str, str]:
    pins: dict[str, str] = {}
    for cls in classes:
        if name in cls.methods:
            if override:
                pins.update(_method_pins(cls, name, library_index(_package_of(cls.key))))
            else:
                pins[f"{cls.key}.{name}"] = _digest(cls.methods[name])
            break  # the first class of the MRO that defines it is the one that runs
        if name in cls.attributes:
            pins[f"{cls.key}.{name}"] = _digest(_attribute_lines(cls, name))
    return pins


def _package_of(key: str) -> str:
    module = key.partition(":")[0]
    return next(lib.package for lib in LIBRARIES if module.startswith(lib.package))


def _our_own_private_names(trees: dict[Path, ast.Module], library: Library) -> set[str]:
    """Private names our code defines itself: functions, classes, module names, and attributes
    assigned on ``self`` that no library base of that class defines (``x._y = ...`` on any
    other receiver is a write to someone else's attribute, not a definition)."""
    names: set[str] = set()
    for path, tree in trees.items():
        imported = _imported_names(tree, _package(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            if isinstance(node, ast.ClassDef):
                inherited = _inherited_names(node, imported, library)
                for sub in ast.walk(node):
                    if (
                        isinstance(sub, ast.Attribute)
                        and isinstance(sub.ctx, ast.Store)
                        and isinstance(sub.value, ast.Name)
                        and sub.value.id == "self"
                        and sub.attr not in inherited
                    ):
                        names.add(sub.attr)
    return {name for name in names if _is_private(name)}


def _library_bases(
    node: ast.ClassDef, imported: dict[str, str], library: Library
) -> list[LibraryClass]:
    mro: list[LibraryClass] = []
    for base in node.bases:
        qualified = _qualified(base, imported)
        # A base class of ours counts through the library classes it derives from.
        if qualified and qualified.startswith((library.package + ".", "pm.")):
            mro += _library_mro(qualified, library)
    return mro


def _inherited_names(node: ast.ClassDef, imported: dict[str, str], library: Library) -> set[str]:
    return {
        name
        for cls in _library_bases(node, imported, library)
        for name in (*cls.methods, *cls.attributes)
    }


def derive_uses(library: Library) -> list[Use]:
    """Every use of a private name of ``library`` in our code, with the pins it needs."""
    index = library_index(library.package)
    paths = sorted((ROOT / library.ours).rglob("*.py"))
    trees = {path: ast.parse(path.read_text()) for path in paths}
    own = _our_own_private_names(trees, library)
    uses: list[Use] = []
    for path, tree in trees.items():
        where = str(path.relative_to(ROOT))
        imported = _imported_names(tree, _package(path))
        library_derived: dict[ast.ClassDef, list[LibraryClass]] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                mro = _library_bases(node, imported, library)
                if mro:
                    library_derived[node] = mro
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                library.package
            ):
                module = node.module or ""
                for alias in node.names:
                    if _is_private(alias.name) or _is_private(module.rpartition(".")[2]):
                        source = index.module_names.get(module, {}).get(alias.name, "")
                        pins = {f"{module}:{alias.name}": _digest(source)}
                        uses.append(Use(pins, f"{where}:{node.lineno}"))
        in_class: set[int] = set()
        for cls_node, mro in library_derived.items():
            for item in cls_node.body:
                # Any override counts, public ones too: it replaces library code that the
                # library's own call sites still expect (handle_read_timeout, authenticate).
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and not (
                    item.name.startswith("__") and item.name.endswith("__")
                ):
                    pins = _name_pins(mro, item.name, override=True)
                    if pins:
                        uses.append(Use(pins, f"{where}:{item.lineno}"))
            for sub in ast.walk(cls_node):
                if isinstance(sub, ast.Attribute) and _is_private(sub.attr):
                    receiver = sub.value
                    on_self = (
                        isinstance(receiver, ast.Name) and receiver.id in ("self", "cls")
                    ) or (
                        isinstance(receiver, ast.Call)
                        and isinstance(receiver.func, ast.Name)
                        and receiver.func.id == "super"
                    )
                    if on_self:
                        in_class.add(id(sub))
                        pins = _name_pins(mro, sub.attr, override=False)
                        if pins:
                            uses.append(Use(pins, f"{where}:{sub.lineno}"))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and _is_private(node.attr)
                and id(node) not in in_class
                and node.attr not in own
            ):
                defining = index.defining(node.attr)
                pins = _name_pins(defining, node.attr, override=False) if defining else {}
                for cls in defining[1:]:
                    pins.update(_name_pins([cls], node.attr, override=False))
                uses.append(Use(pins, f"{where}:{node.lineno} ({node.attr})"))
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("startswith", "endswith")
            ):
                for argument in node.args:
                    for text in _string_constants(argument):
                        pins = {
                            key: _digest(source)
                            for key, source in index.functions.items()
                            if text in source
                        }
                        if pins or _looks_like_library_output(text):
                            uses.append(Use(pins, f"{where}:{node.lineno} ({text!r})"))
    return uses


def _string_constants(node: ast.expr) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.Tuple):
        return [text for element in node.elts for text in _string_constants(element)]
    return []


def _looks_like_library_output(text: str) -> bool:
    # A matched text found nowhere in the library is a filter that no longer matches anything
    # (reported as unresolved), unless it is plainly not a message (a short token).
    return len(text) >= 12


def _pins_of(library: Library) -> tuple[dict[str, str], dict[str, list[str]]]:
    pins: dict[str, str] = {}
    where: dict[str, list[str]] = defaultdict(list)
    for use in derive_uses(library):
        if not use.pins:
            where[f"<unresolved> {use.where}"].append(use.where)
        for key, digest in use.pins.items():
            pins[key] = digest
            where[key].append(use.where)
    return pins, where


@pytest.mark.parametrize("library", LIBRARIES, ids=lambda library: library.package)
def test_the_pinned_library_version_is_installed(library: Library) -> None:
    assert version(library.distribution) == library.version


@pytest.mark.parametrize("library", LIBRARIES, ids=lambda library: library.package)
def test_every_private_name_our_code_uses_is_pinned_and_unchanged(library: Library) -> None:
    derived, where = _pins_of(library)
    unresolved = sorted(key for key in where if key.startswith("<unresolved>"))
    assert not unresolved, f"private names found neither in our code nor in {library.package}"
    pinned = PINNED[library.package]
    missing = {key: derived[key] for key in sorted(set(derived) - set(pinned))}
    unused = sorted(set(pinned) - set(derived))
    assert not missing, "used but not pinned (check the source, then add):\n" + "\n".join(
        f"    {key!r}: {digest!r},  # {', '.join(where[key])}" for key, digest in missing.items()
    )
    assert not unused, f"pinned but no longer used (remove): {unused}"
    changed = sorted(key for key in pinned if pinned[key] != derived[key])
    assert not changed, "library source changed (re-read it, adapt our code): " + ", ".join(
        f"{key} now {derived[key]}" for key in changed
    )


# Modules outside a library's directory that may import it for its public API only (checked
# below): the benchmark's plain threaded paho requester is paho as most programs use it.
PUBLIC_API_USERS = {"bench/_paho_requester.py": "paho.mqtt"}


@pytest.mark.parametrize("library", LIBRARIES, ids=lambda library: library.package)
def test_only_one_directory_of_ours_imports_each_library(library: Library) -> None:
    top = library.package.split(".")[0]
    for path in sorted([*(ROOT / "pm").rglob("*.py"), *(ROOT / "bench").rglob("*.py")]):
        if path.is_relative_to(ROOT / library.ours):
            continue
        if PUBLIC_API_USERS.get(str(path.relative_to(ROOT))) == library.package:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            modules = []
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                modules = [node.module or ""]
            assert not any(module.split(".")[0] == top for module in modules), (
                f"{path.relative_to(ROOT)}:{node.lineno} imports {top} outside {library.ours}"
            )


# -- hypercorn: what pm/http/server.py mirrors or replaces ----------------------------------
#
# hypercorn is pinned exactly (0.18.0). pm/http/server.py uses no private name of it, so the
# derivation above does not apply; instead it mirrors ``hypercorn.trio.serve`` (with a
# deadline on client writes) and replaces ``ws_stream.WebsocketBuffer`` by a subclass that
# ``WSStream.__init__`` picks up by name. These pins fail when that source changes: re-read it,
# carry the change into pm/http/server.py, then update the digest.
HYPERCORN_PINS = {
    "hypercorn.trio:serve": "0f4d3d1d28054eff",
    "hypercorn.protocol.ws_stream:WebsocketBuffer": "34c9f5fc79b24bfe",
    "hypercorn.protocol.ws_stream:WSStream.__init__": "8b52d1b30aa2acf9",
    # pm/http/websocket_compression.py: WSStream.handle is overridden (the extension offer
    # dropped before the Handshake reads it), Handshake.accept is where hypercorn always
    # accepts permessage-deflate, and the _create_stream of both protocols build WSStream by
    # its module name.
    "hypercorn.protocol.ws_stream:WSStream.handle": "e25b8b2f1d6688fd",
    "hypercorn.protocol.ws_stream:Handshake.accept": "8abe40106d0ec930",
    "hypercorn.protocol.h11:H11Protocol._create_stream": "6bd0bac8d8001d70",
    "hypercorn.protocol.h2:H2Protocol._create_stream": "10eb9d40a119b8ba",
}


def _source_of(key: str) -> str:
    """The source text of ``module:Qualified.name`` as the module's file has it (not the live
    object: pm/http/server.py replaces ``WebsocketBuffer`` in its module at run time)."""
    module_name, _, qualified = key.partition(":")
    source = inspect.getsource(importlib.import_module(module_name))
    body: list[ast.stmt] = ast.parse(source).body
    node: ast.stmt | None = None
    for part in qualified.split("."):
        node = next(
            child
            for child in body
            if isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and child.name == part
        )
        body = node.body
    segment = ast.get_source_segment(source, node) if node is not None else None
    assert segment is not None, key
    return segment


def test_the_hypercorn_sources_pm_http_server_mirrors_are_unchanged() -> None:
    assert version("hypercorn") == "0.18.0"
    changed = {
        key: _digest(_source_of(key))
        for key, digest in HYPERCORN_PINS.items()
        if _digest(_source_of(key)) != digest
    }
    assert not changed, f"hypercorn source changed (re-read it, adapt pm/http/server.py): {changed}"


@pytest.mark.parametrize("module", sorted(PUBLIC_API_USERS))
def test_public_api_users_touch_no_private_name(module: str) -> None:
    # Nothing here derives pins for them: they must not need any.
    for node in ast.walk(ast.parse((ROOT / module).read_text())):
        if isinstance(node, ast.Attribute):
            assert not (node.attr.startswith("_") and not node.attr.startswith("__")), (
                f"{module}:{node.lineno} reads the private name {node.attr}"
            )
        if isinstance(node, ast.ImportFrom):
            private = [alias.name for alias in node.names if alias.name.startswith("_")]
            assert not private, f"{module}:{node.lineno} imports {private}"
