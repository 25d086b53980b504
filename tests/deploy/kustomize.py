"""Offline renderer for the small subset of Kustomize that deploy/kubernetes uses.

Neither kubectl nor kustomize can be installed here, so the tests render the overlays with
this. It does what `kustomize build` does for exactly these kustomization fields and
refuses any other, so a kustomization that outgrows it fails loudly instead of rendering
wrong:
- `resources`: YAML files and folders holding a kustomization.yaml, in order;
- `patches`: from `path` or inline `patch`; a mapping is a strategic-merge patch matched by
  kind and name, a list is a JSON 6902 patch applied to its `target` (kind and name);
- `images`: `name` -> `newName`, `newTag`, `digest` on pod-template containers.
Each kustomization applies its patches and then its images to everything it gathered,
bases included, as kustomize does.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

KUSTOMIZATION_FIELDS = {"apiVersion", "kind", "resources", "patches", "images"}
PATCH_FIELDS = {"path", "patch", "target"}
TARGET_FIELDS = {"kind", "name"}
IMAGE_FIELDS = {"name", "newName", "newTag", "digest"}

# Kinds whose lists Kubernetes merges item by item in a strategic-merge patch, with the
# merge keys it declares for the pod-spec fields; other kinds (ConfigMap, custom resources)
# get JSON merge patch semantics: mappings merge, lists are replaced.
STRATEGIC_KINDS = {"Deployment"}
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
}


class KustomizeError(ValueError):
    """A kustomization this renderer cannot render exactly."""


def render(folder: str | Path) -> list[dict[str, Any]]:
    """The resources `kustomize build folder` would print, as dicts, in order."""
    folder = Path(folder)
    path = folder / "kustomization.yaml"
    if not path.is_file():
        raise KustomizeError(f"{folder}: no kustomization.yaml")
    spec = yaml.safe_load(path.read_text()) or {}
    unknown = set(spec) - KUSTOMIZATION_FIELDS
    if unknown:
        raise KustomizeError(f"{path}: fields this renderer does not support: {sorted(unknown)}")

    resources: list[dict[str, Any]] = []
    for entry in spec.get("resources", []):
        target = folder / entry
        loaded = render(target) if target.is_dir() else _load_documents(target)
        for res in loaded:
            if any(_res_id(res) == _res_id(other) for other in resources):
                raise KustomizeError(f"{path}: resource {_res_id(res)} defined twice")
            resources.append(res)

    for patch in spec.get("patches", []):
        _apply_patch(resources, patch, folder, path)
    for image in spec.get("images", []):
        _apply_image(resources, image, path)
    return resources


def _load_documents(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise KustomizeError(f"{path}: no such resource file")
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _res_id(res: dict[str, Any]) -> tuple[str, str, str, str]:
    meta = res.get("metadata", {})
    return (res.get("apiVersion", ""), res.get("kind", ""), meta.get("namespace", ""), meta.get("name", ""))


def _apply_patch(resources: list[dict[str, Any]], patch: dict[str, Any], folder: Path, where: Path) -> None:
    unknown = set(patch) - PATCH_FIELDS
    if unknown or ("path" in patch) == ("patch" in patch):
        raise KustomizeError(f"{where}: a patch needs exactly one of path/patch, and only target besides: {patch}")
    text = (folder / patch["path"]).read_text() if "path" in patch else patch["patch"]
    body = yaml.safe_load(text)
    target = patch.get("target")
    if target is not None and set(target) - TARGET_FIELDS:
        raise KustomizeError(f"{where}: target fields this renderer does not support: {sorted(set(target) - TARGET_FIELDS)}")

    if isinstance(body, list):
        if target is None:
            raise KustomizeError(f"{where}: a JSON 6902 patch needs a target")
        for res in _matching(resources, target, where):
            for op in body:
                _json6902(res, op)
    elif isinstance(body, dict):
        selector = target or {"kind": body.get("kind"), "name": body.get("metadata", {}).get("name")}
        for res in _matching(resources, selector, where):
            merged = _merge(res, body, res.get("kind") in STRATEGIC_KINDS)
            res.clear()
            res.update(merged)
    else:
        raise KustomizeError(f"{where}: a patch must be a mapping or a list")


def _matching(resources: list[dict[str, Any]], target: dict[str, Any], where: Path) -> list[dict[str, Any]]:
    found = [
        r
        for r in resources
        if r.get("kind") == target.get("kind") and r.get("metadata", {}).get("name") == target.get("name")
    ]
    if not found:
        raise KustomizeError(f"{where}: no resource matches the patch target {target}")
    return found


def _merge(base: Any, patch: Any, strategic: bool, field: str = "") -> Any:
    """Strategic-merge (strategic=True) or JSON merge patch of `patch` onto `base`."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = copy.deepcopy(base)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            elif key in out:
                out[key] = _merge(out[key], value, strategic, key)
            else:
                out[key] = copy.deepcopy(value)
        return out
    if strategic and isinstance(base, list) and isinstance(patch, list) and field in MERGE_KEYS:
        key = MERGE_KEYS[field]
        out = copy.deepcopy(base)
        for item in patch:
            if not isinstance(item, dict) or key not in item:
                raise KustomizeError(f"items of {field} need their merge key {key!r}: {item}")
            index = next((i for i, old in enumerate(out) if old.get(key) == item[key]), None)
            if index is None:
                out.append(copy.deepcopy(item))
            else:
                out[index] = _merge(out[index], item, strategic)
        return out
    return copy.deepcopy(patch)


def _json6902(doc: dict[str, Any], op: dict[str, Any]) -> None:
    kind = op.get("op")
    tokens = [t.replace("~1", "/").replace("~0", "~") for t in op["path"].split("/")[1:]]
    if not tokens:
        raise KustomizeError(f"JSON 6902 path must not be the root: {op}")
    parent: Any = doc
    for token in tokens[:-1]:
        parent = parent[int(token)] if isinstance(parent, list) else parent[token]
    last = tokens[-1]
    if kind == "test":
        current = parent[int(last)] if isinstance(parent, list) else parent[last]
        if current != op["value"]:
            raise KustomizeError(f"JSON 6902 test failed at {op['path']}: {current!r} != {op['value']!r}")
    elif kind in ("add", "replace"):
        value = copy.deepcopy(op["value"])
        if isinstance(parent, list):
            if kind == "add":
                parent.insert(len(parent) if last == "-" else int(last), value)
            else:
                parent[int(last)] = value
        else:
            if kind == "replace" and last not in parent:
                raise KustomizeError(f"JSON 6902 replace of a missing member {op['path']}")
            parent[last] = value
    elif kind == "remove":
        if isinstance(parent, list):
            del parent[int(last)]
        else:
            del parent[last]
    else:
        raise KustomizeError(f"JSON 6902 op this renderer does not support: {kind!r}")


def _apply_image(resources: list[dict[str, Any]], image: dict[str, Any], where: Path) -> None:
    unknown = set(image) - IMAGE_FIELDS
    if unknown or "name" not in image:
        raise KustomizeError(f"{where}: image entries take {sorted(IMAGE_FIELDS)} and need name: {image}")
    for res in resources:
        pod = res.get("spec", {}).get("template", {}).get("spec", {})
        for container in pod.get("containers", []) + pod.get("initContainers", []):
            name, tag, digest = split_image(container.get("image", ""))
            if name != image["name"]:
                continue
            name = image.get("newName", name)
            if "digest" in image:
                container["image"] = f"{name}@{image['digest']}"
            elif "newTag" in image:
                container["image"] = f"{name}:{image['newTag']}"
            else:
                container["image"] = name + (f"@{digest}" if digest else f":{tag}" if tag else "")


def split_image(ref: str) -> tuple[str, str, str]:
    """`registry:5000/repo/name:tag@sha256:...` -> (name, tag, digest); empty parts are ''."""
    ref, _, digest = ref.partition("@")
    name, tag = ref, ""
    head, sep, tail = ref.rpartition(":")
    if sep and "/" not in tail:  # a colon after the last slash is the tag, not a port
        name, tag = head, tail
    return name, tag, digest
