"""The CRD schema refresh script and the jsonschema validator, on a small generated CRD tree.

The tree has the layout of the KubeRay repository (``<tag>/ray-operator/config/crd/bases/``) and
is served to the script as a ``file://`` URL, so nothing reaches the network.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import pytest
import yaml

from scripts.refresh_kuberay_schemas import KINDS, crd_url, extract_schema, refresh
from tests.cluster_configs.crd_schema import schema_errors

VERSION = "v0.0.0-test"
# A RayCluster-shaped schema: closed objects, a map of strings, an enum, an int-or-string
# quantity, a required list item key, and a pod template kept open.
SCHEMA = {
    "type": "object",
    "properties": {
        "apiVersion": {"type": "string"},
        "kind": {"type": "string"},
        "metadata": {"type": "object"},
        "spec": {
            "type": "object",
            "required": ["headGroupSpec"],
            "properties": {
                "authOptions": {"type": "object",
                                "properties": {"mode": {"type": "string",
                                                        "enum": ["disabled", "token"]}}},
                "headGroupSpec": {
                    "type": "object",
                    "required": ["rayStartParams", "template"],
                    "properties": {
                        "rayStartParams": {"type": "object",
                                           "additionalProperties": {"type": "string"}},
                        "template": {"type": "object",
                                     "x-kubernetes-preserve-unknown-fields": True},
                    },
                },
                "workerGroupSpecs": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["groupName"],
                        "properties": {
                            "groupName": {"type": "string"},
                            "maxReplicas": {"type": "integer", "format": "int32"},
                            "memory": {"anyOf": [{"type": "integer"}, {"type": "string"}],
                                       "x-kubernetes-int-or-string": True},
                        },
                    },
                },
            },
        },
    },
}
MANIFEST = {
    "apiVersion": "ray.io/v1",
    "kind": "RayCluster",
    "metadata": {"name": "sscc", "labels": {"any": "label"}},
    "spec": {
        "authOptions": {"mode": "token"},
        "headGroupSpec": {"rayStartParams": {"num-cpus": "0"},
                          "template": {"spec": {"containers": [{"name": "ray-head"}]}}},
        "workerGroupSpecs": [{"groupName": "cpu", "maxReplicas": 4, "memory": "8Gi"}],
    },
}


def crd_text(kind: str, plural: str, schema: dict) -> str:
    """A CustomResourceDefinition of ``kind`` serving ``schema`` as version v1."""
    return yaml.safe_dump({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.ray.io"},
        "spec": {"group": "ray.io", "names": {"kind": kind, "plural": plural},
                 "versions": [{"name": "v1", "served": True, "storage": True,
                               "schema": {"openAPIV3Schema": schema}}]},
    })


def test_refresh_writes_each_kinds_schema_with_its_source(tmp_path: Path) -> None:
    bases = tmp_path / "repo" / VERSION / "ray-operator" / "config" / "crd" / "bases"
    bases.mkdir(parents=True)
    for i, (kind, plural) in enumerate(KINDS.items()):
        schema = {**SCHEMA, "description": f"schema {i}"}
        (bases / f"ray.io_{plural}.yaml").write_text(crd_text(kind, plural, schema))
    base_url = (tmp_path / "repo").as_uri()
    target = refresh(VERSION, tmp_path / "schemas", base_url)
    assert target == tmp_path / "schemas" / f"kuberay-{VERSION}"
    source = json.loads((target / "SOURCE.json").read_text())
    assert source["kuberay_version"] == VERSION and source["api_version"] == "ray.io/v1"
    for i, (kind, plural) in enumerate(KINDS.items()):
        crd = bases / f"ray.io_{plural}.yaml"
        assert json.loads((target / f"{plural}.json").read_text()) == {
            **SCHEMA, "description": f"schema {i}"}
        assert source["kinds"][kind] == {
            "file": f"{plural}.json", "url": crd_url(base_url, VERSION, plural),
            "sha256": hashlib.sha256(crd.read_bytes()).hexdigest()}


def test_extract_schema_refuses_another_kind_or_no_v1() -> None:
    text = crd_text("RayJob", "rayjobs", SCHEMA)
    with pytest.raises(ValueError, match="x.yaml: defines kind 'RayJob', expected 'RayCluster'"):
        extract_schema(text, "RayCluster", "x.yaml")
    with pytest.raises(ValueError, match="x.yaml: no v1 version"):
        extract_schema(text.replace("name: v1", "name: v1alpha1"), "RayJob", "x.yaml")
    with pytest.raises(ValueError, match="not a CustomResourceDefinition"):
        extract_schema("kind: RayJob\n", "RayJob", "x.yaml")


def test_validator_accepts_a_valid_manifest_and_names_each_broken_field() -> None:
    assert schema_errors(MANIFEST, SCHEMA, "c.yaml:RayCluster") == []
    broken = copy.deepcopy(MANIFEST)
    spec = broken["spec"]
    spec["enableAutoscaling"] = True  # real field: enableInTreeAutoscaling
    spec["authOptions"]["mode"] = "none"
    spec["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0
    spec["workerGroupSpecs"][0].update(maxReplicas="4", gpus=1)
    del spec["workerGroupSpecs"][0]["groupName"]
    prefix = "c.yaml:RayCluster.spec"
    assert schema_errors(broken, SCHEMA, "c.yaml:RayCluster") == [
        f"{prefix}.authOptions.mode: 'none' is not one of ['disabled', 'token']",
        f"{prefix}.enableAutoscaling: unknown field",
        f"{prefix}.headGroupSpec.rayStartParams.num-cpus: 0 is not of type 'string'",
        f"{prefix}.workerGroupSpecs[0].gpus: unknown field",
        f"{prefix}.workerGroupSpecs[0].maxReplicas: '4' is not of type 'integer'",
        f"{prefix}.workerGroupSpecs[0]: 'groupName' is a required property",
    ]
