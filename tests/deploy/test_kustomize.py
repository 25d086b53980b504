"""The offline Kustomize renderer does what kustomize does for the fields it supports, and refuses the rest."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.deploy.kustomize import KustomizeError, render, split_image

DEPLOYMENT = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "app"},
    "spec": {
        "template": {
            "spec": {
                "initContainers": [{"name": "init", "image": "busybox:1.37"}],
                "containers": [
                    {
                        "name": "main",
                        "image": "app",
                        "env": [{"name": "A", "value": "1"}],
                        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                    },
                    {"name": "sidecar", "image": "registry:5000/team/sidecar:2.0"},
                ],
                "tolerations": [{"key": "old", "operator": "Exists"}],
            }
        }
    },
}
CONFIGMAP = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "app"}, "data": {"X": "1", "Y": "2"}}


def write(folder: Path, name: str, content) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    text = content if isinstance(content, str) else yaml.safe_dump_all(content if isinstance(content, list) else [content])
    (folder / name).write_text(text)


@pytest.fixture
def base(tmp_path: Path) -> Path:
    folder = tmp_path / "base"
    write(folder, "deployment.yaml", DEPLOYMENT)
    write(folder, "configmap.yaml", CONFIGMAP)
    write(folder, "kustomization.yaml", {"resources": ["deployment.yaml", "configmap.yaml"]})
    return folder


def overlay(tmp_path: Path, spec: dict, files: dict | None = None) -> Path:
    folder = tmp_path / "overlay"
    for name, content in (files or {}).items():
        write(folder, name, content)
    write(folder, "kustomization.yaml", {"resources": ["../base"], **spec})
    return folder


def containers(resources) -> dict:
    pod = next(r for r in resources if r["kind"] == "Deployment")["spec"]["template"]["spec"]
    return {c["name"]: c for c in pod["containers"] + pod["initContainers"]}


def test_resources_render_in_order_through_bases(tmp_path, base):
    out = render(overlay(tmp_path, {}))
    assert [(r["kind"], r["metadata"]["name"]) for r in out] == [("Deployment", "app"), ("ConfigMap", "app")]
    assert out[0] == DEPLOYMENT


def test_strategic_merge_merges_containers_env_and_mounts_by_key(tmp_path, base):
    patch = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "app"},
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "main",
                            "env": [{"name": "A", "value": "2"}, {"name": "B", "value": "3"}],
                            "volumeMounts": [{"name": "cache", "mountPath": "/cache"}],
                            "resources": {"limits": {"nvidia.com/gpu": 1}},
                        }
                    ],
                    # no merge key for tolerations: replaced, as Kubernetes does
                    "tolerations": [{"key": "new", "operator": "Exists"}],
                }
            }
        },
    }
    out = render(overlay(tmp_path, {"patches": [{"path": "p.yaml"}]}, {"p.yaml": patch}))
    found = containers(out)
    main = found["main"]
    assert main["image"] == "app"  # untouched fields stay
    assert main["env"] == [{"name": "A", "value": "2"}, {"name": "B", "value": "3"}]
    assert [m["mountPath"] for m in main["volumeMounts"]] == ["/tmp", "/cache"]
    assert main["resources"] == {"limits": {"nvidia.com/gpu": 1}}
    assert set(found) == {"main", "sidecar", "init"}  # the other containers are kept
    assert out[0]["spec"]["template"]["spec"]["tolerations"] == [{"key": "new", "operator": "Exists"}]


def test_merge_patch_on_a_configmap_adds_changes_and_deletes_keys(tmp_path, base):
    patch = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "app"}, "data": {"X": "9", "Y": None, "Z": "3"}}
    out = render(overlay(tmp_path, {"patches": [{"path": "p.yaml"}]}, {"p.yaml": patch}))
    assert out[1]["data"] == {"X": "9", "Z": "3"}


def test_json6902_patch_on_its_target(tmp_path, base):
    ops = """
- op: replace
  path: /data/X
  value: "5"
- op: add
  path: /data/a~1b
  value: "slash"
- op: remove
  path: /data/Y
"""
    spec = {"patches": [{"target": {"kind": "ConfigMap", "name": "app"}, "patch": ops}]}
    out = render(overlay(tmp_path, spec))
    assert out[1]["data"] == {"X": "5", "a/b": "slash"}
    assert CONFIGMAP["data"] == {"X": "1", "Y": "2"}  # the source is not mutated


def test_json6902_replace_of_a_missing_member_fails(tmp_path, base):
    spec = {"patches": [{"target": {"kind": "ConfigMap", "name": "app"}, "patch": "- {op: replace, path: /data/Q, value: x}"}]}
    with pytest.raises(KustomizeError, match="missing"):
        render(overlay(tmp_path, spec))


def test_images_rewrite_containers_and_init_containers(tmp_path, base):
    spec = {
        "images": [
            {"name": "app", "newName": "registry.example.com/app", "newTag": "1.2-gpu"},
            {"name": "busybox", "newTag": "1.36"},
            {"name": "registry:5000/team/sidecar", "digest": "sha256:" + "a" * 64},
        ]
    }
    found = containers(render(overlay(tmp_path, spec)))
    assert found["main"]["image"] == "registry.example.com/app:1.2-gpu"
    assert found["init"]["image"] == "busybox:1.36"
    assert found["sidecar"]["image"] == "registry:5000/team/sidecar@sha256:" + "a" * 64


@pytest.mark.parametrize(
    "ref, parts",
    [
        ("app", ("app", "", "")),
        ("app:1.0", ("app", "1.0", "")),
        ("registry:5000/app", ("registry:5000/app", "", "")),
        ("registry:5000/app:1.0@sha256:ab", ("registry:5000/app", "1.0", "sha256:ab")),
    ],
)
def test_split_image(ref, parts):
    assert split_image(ref) == parts


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"namePrefix": "x-"}, "does not support"),
        ({"patches": [{"path": "missing-target.yaml"}]}, "no resource matches"),
        ({"patches": [{"patch": "- {op: remove, path: /data/X}"}]}, "needs a target"),
        ({"patches": [{"target": {"kind": "ConfigMap", "name": "app", "labelSelector": "a=b"}, "patch": "[]"}]}, "target"),
        ({"images": [{"name": "app", "newImage": "x"}]}, "image entries"),
    ],
)
def test_unsupported_or_unmatched_input_is_refused(tmp_path, base, spec, message):
    files = {"missing-target.yaml": {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "other"}}}
    with pytest.raises(KustomizeError, match=message):
        render(overlay(tmp_path, spec, files))


def test_a_resource_defined_twice_is_refused(tmp_path, base):
    folder = tmp_path / "twice"
    write(folder, "again.yaml", CONFIGMAP)
    write(folder, "kustomization.yaml", {"resources": ["../base", "again.yaml"]})
    with pytest.raises(KustomizeError, match="twice"):
        render(folder)
