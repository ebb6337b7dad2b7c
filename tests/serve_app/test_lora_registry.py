"""The server's adapter registry and what a submit's `loras` become (no Ray): names resolved to the registry's
files, checked against the model at submit, recorded on the job, hidden from clients."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from serve_app.contract import Video
from serve_app.loras import AdapterRefused, AdapterRegistry, LoraRef
from serve_app.requests import InvalidRequest, loras_field, new_job, to_generation_request
from serve_app.schemas import VideoCreateParams
from skyreels.lora import LoraSpec
from skyreels.models import SERVED_MODEL_IDS, ServedModel
from skyreels.request import Task
from skyreels.tiny import LORA_TARGETS, make_tiny_lora, tiny_transformer, write_lora

T2V = ServedModel(SERVED_MODEL_IDS[Task.T2V], Task.T2V, "tiny")
I2V = ServedModel(SERVED_MODEL_IDS[Task.I2V], Task.I2V, "tiny")
SMALL = dict(size="64x64", num_frames=9, num_inference_steps=2, seed=3)


@pytest.fixture(scope="module")
def registry_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A flat adapter file, a diffusers-saved folder in a subfolder, and one made for a wider DiT."""
    root = tmp_path_factory.mktemp("loras")
    saved = make_tiny_lora(root / "styles" / "ink", seed=1)  # styles/ink/pytorch_lora_weights.safetensors
    shutil.copy(make_tiny_lora(root / "tmp-flat", seed=2), root / "glow.safetensors")
    shutil.rmtree(root / "tmp-flat")
    wide = tiny_transformer(Task.T2V, attention_head_dim=16)
    shutil.copy(write_lora(wide, root / "tmp-wide", rank=4, seed=3, targets=LORA_TARGETS), root / "wide.safetensors")
    shutil.rmtree(root / "tmp-wide")
    assert saved.is_file()
    return root


def test_the_registry_lists_every_adapter_with_the_models_it_fits(registry_dir: Path) -> None:
    cards = {card.id: card for card in AdapterRegistry(str(registry_dir), [T2V, I2V]).cards()}
    assert set(cards) == {"glow", "styles/ink", "wide"}
    assert cards["glow"].models == [T2V.id, I2V.id] and cards["glow"].rank == 4 and cards["glow"].problem is None
    assert cards["styles/ink"].models == [T2V.id, I2V.id]
    assert cards["wide"].models == [] and "shape" in cards["wide"].problem


def test_names_resolve_to_the_registry_files_at_their_scales(registry_dir: Path) -> None:
    applied = AdapterRegistry(str(registry_dir), [T2V]).resolve(
        [LoraRef(name="styles/ink", scale=0.5), LoraRef(name="glow")], T2V)
    assert [(lora.name, lora.scale) for lora in applied] == [("styles/ink", 0.5), ("glow", 1.0)]
    assert Path(applied[0].source) == registry_dir / "styles" / "ink" / "pytorch_lora_weights.safetensors"
    assert applied[1].spec == LoraSpec(source=str(registry_dir / "glow.safetensors"), scale=1.0)


@pytest.mark.parametrize(("names", "message"), [
    (["nope"], "no adapter named 'nope'; available (GET /v1/loras): glow, styles/ink, wide"),
    (["wide"], "adapter 'wide' cannot run on skyreels-v1-t2v: "),
    (["glow", "glow"], "each adapter may be named once"),
    (["a", "b", "c", "d", "e"], "at most 4 adapters per video, got 5"),
])
def test_a_submit_naming_what_cannot_run_is_refused_with_the_reason(registry_dir: Path, names, message) -> None:
    with pytest.raises(AdapterRefused, match="^loras: ") as refused:
        AdapterRegistry(str(registry_dir), [T2V]).resolve([LoraRef(name=name) for name in names], T2V)
    assert message in str(refused.value)


def test_a_server_without_a_registry_refuses_adapters() -> None:
    with pytest.raises(AdapterRefused, match="this server has no LoRA adapters"):
        AdapterRegistry(None, [T2V]).resolve([LoraRef(name="glow")], T2V)
    assert AdapterRegistry(None, [T2V]).cards() == []


def test_an_adapter_added_after_a_listing_is_found_at_once(tmp_path: Path) -> None:
    registry = AdapterRegistry(str(tmp_path), [T2V])
    assert registry.cards() == []
    make_tiny_lora(tmp_path / "fresh", seed=4)
    assert [lora.name for lora in registry.resolve([LoraRef(name="fresh")], T2V)] == ["fresh"]


def test_the_job_records_its_adapters_and_clients_see_names_and_scales_only(registry_dir: Path) -> None:
    registry = AdapterRegistry(str(registry_dir), [T2V])
    params = VideoCreateParams(prompt="ink on paper", loras=[{"name": "styles/ink", "scale": 0.7}], **SMALL)
    job, request = new_job(params, None, [T2V], registry)
    source = str(registry_dir / "styles" / "ink" / "pytorch_lora_weights.safetensors")
    assert request.loras == [LoraSpec(source=source, scale=0.7)]
    assert [(lora.name, lora.scale, lora.source) for lora in job.loras] == [("styles/ink", 0.7, source)]
    assert to_generation_request(job, None).loras == request.loras  # a re-run reads the same file
    view = Video.of(job).model_dump(mode="json")
    assert view["loras"] == [{"name": "styles/ink", "scale": 0.7}]


def test_new_job_turns_a_refusal_into_a_422(registry_dir: Path) -> None:
    params = VideoCreateParams(prompt="wide", loras=[{"name": "wide"}], **SMALL)
    with pytest.raises(InvalidRequest) as refused:
        new_job(params, None, [T2V], AdapterRegistry(str(registry_dir), [T2V]))
    assert refused.value.status_code == 422 and "cannot run on skyreels-v1-t2v" in refused.value.message


def test_a_multipart_body_gives_loras_as_a_json_array() -> None:
    assert loras_field('[{"name": "glow", "scale": 0.5}]') == [{"name": "glow", "scale": 0.5}]
    with pytest.raises(InvalidRequest, match="give a JSON array"):
        loras_field("glow:0.5")


def test_an_adapter_of_the_input_projection_is_refused_where_gangs_swap_models(tmp_path: Path) -> None:
    write_lora(tiny_transformer(Task.T2V), tmp_path / "patchy", rank=2, seed=6, targets=("x_embedder.proj", "to_q"))
    (card,) = AdapterRegistry(str(tmp_path), [T2V, I2V]).cards()
    assert card.models == [] and "input projection (x_embedder)" in card.problem
    assert AdapterRegistry(str(tmp_path), [T2V]).cards()[0].models == [T2V.id]  # one model: no swaps
