"""Config overrides of a saved run (eval.py --config.x.y=v): types, unknown fields, inference sections."""

import ml_collections
import pytest

from jaxreg.runs.workdir import apply_overrides


def _config():
    return ml_collections.ConfigDict({"eval": {"split": "test", "limit": 0},
                                      "diffusion": {"num_steps": 2000, "sampler": {"steps": 50, "method": "ddim",
                                                                                    "guidance": {"bending": 0.0}}}})


def test_overrides_parse_literals_and_leave_the_original_alone():
    config = _config()
    out = apply_overrides(config, ["--config.diffusion.sampler.steps=25", "diffusion.sampler.method=ddpm",
                                   "--config.diffusion.sampler.guidance.bending=0.5", "eval.limit=3"])
    assert out.diffusion.sampler.steps == 25 and out.diffusion.sampler.method == "ddpm"
    assert out.diffusion.sampler.guidance.bending == 0.5 and out.eval.limit == 3
    assert config.diffusion.sampler.steps == 50  # a copy


def test_inference_sections_may_gain_fields_others_may_not():
    out = apply_overrides(_config(), ["eval.name=ddim25", "diffusion.sampler.clip=3.0"])
    assert out.eval.name == "ddim25" and out.diffusion.sampler.clip == 3.0
    with pytest.raises(ValueError, match="no field 'diffusion.schedule'"):
        apply_overrides(_config(), ["diffusion.schedule=cosine"])
    with pytest.raises(ValueError, match="no section 'model'"):
        apply_overrides(_config(), ["model.features=3"])


def test_bad_overrides_raise_value_errors():
    with pytest.raises(ValueError, match="section.field=value"):
        apply_overrides(_config(), ["diffusion.sampler.steps"])
    with pytest.raises(ValueError, match="steps"):
        apply_overrides(_config(), ["diffusion.sampler.steps=many"])  # a string into an int field
