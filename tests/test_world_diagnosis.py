"""benchmarks.world_diagnosis on the shipped world: the cheap measurements, no LoRA."""
from benchmarks.world_diagnosis import main


def test_diagnosis_measures_the_shipped_world():
    result = main(["--seeds", "1"])
    placement = result["placement"]
    # the concept photos are framed like the base's data (concepts.PHOTO_SPREAD)
    assert placement["concept_photos"]["offset_max"] <= placement["base"]["offset_max"] + 0.02
    assert result["vae"]["photos"]["shape"] >= 0.95 and result["vae"]["photos"]["pattern"] >= 0.95
    assert result["vae"]["reconstructions"]["pattern"] >= 0.8
    by_concept = result["vae"]["shape_by_concept"]
    assert len(by_concept) == 12 and all(set(v) == {"photos", "reconstructions"} for v in by_concept.values())
    photos = [v["photos"] for v in by_concept.values()]
    assert abs(sum(photos) / len(photos) - result["vae"]["photos"]["shape"]) < 1e-9  # 5 photos each
    assert set(result["base_prompts"]) == {"class_prompt", "bare_shape", "full_caption"}
    assert all(0 <= v <= 1 for v in result["base_prompts"].values())
    assert 0 < result["text"]["class_prompts_cosine"] < 1
    assert "lora" not in result
    blur = result["shape_under_blur"]
    assert set(blur) == {"circle", "square", "triangle", "star", "heart", "cross", "diamond", "hexagon"}
    assert all(row["crisp"] >= 0.95 for row in blur.values())  # the classifier reads crisp renders
    assert all(0 <= v <= 1 and set(row) == {"crisp", "blur1", "blur2", "vae"}
               for row in blur.values() for v in row.values())
