"""Tests for concept ingestion (lifelong_diffusion.ingest) and its file helpers."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from lifelong_diffusion import fileio, ingest
from lifelong_diffusion.fileio import atomic_dir, replace_dir_atomically, sha256_file
from lifelong_diffusion.ingest import ConceptDataError, ingest_concept, read_concept_yaml

RES = 32
MIN_SIZE = 24
ORIENTATION = 0x0112
BASE_CONFIG = {"token": "<my-dog>", "class_word": "dog"}


# --- helpers ----------------------------------------------------------------


def colour(index: int) -> tuple[int, int, int]:
    return (40 + 50 * index % 200, 120, 220 - 30 * index % 200)


def write_image(path: Path, size=(48, 40), fill=(200, 30, 30), mode="RGB", **save_kwargs) -> Path:
    Image.new(mode, size, fill).save(path, **save_kwargs)
    return path


def write_config(folder: Path, config: dict | str) -> Path:
    text = config if isinstance(config, str) else yaml.safe_dump(config)
    path = folder / "concept.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def make_concept(root: Path, name="dog", n_images=3, config=None) -> Path:
    folder = root / "concepts" / name
    folder.mkdir(parents=True)
    write_config(folder, BASE_CONFIG if config is None else config)
    for index in range(n_images):
        write_image(folder / f"img_{index}.png", fill=colour(index))
    return folder


def run(folder: Path, out: Path | None = None, **kwargs) -> dict:
    out = out or folder.parent.parent / "processed" / folder.name
    return ingest_concept(folder, out, resolution=RES, min_size=MIN_SIZE, **kwargs)


def problems_of(folder: Path, **kwargs) -> list[str]:
    with pytest.raises(ConceptDataError) as info:
        run(folder, **kwargs)
    return info.value.problems


def single_problem(folder: Path, **kwargs) -> str:
    problems = problems_of(folder, **kwargs)
    assert len(problems) == 1, problems
    return problems[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def near(pixel, expected, tolerance=12) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, expected))


# --- happy path -------------------------------------------------------------


def test_happy_path_writes_normalized_pngs_and_manifest(tmp_path):
    config = {
        **BASE_CONFIG,
        "prompts": ["a photo of {token} {class_word}", "{token} on a beach"],
        "description": "my dog Rex",
        "world": {"season": "summer", "tags": [1, 2]},
    }
    folder = make_concept(tmp_path, config=config)
    write_image(folder / "img_3.JPG", size=(80, 60), fill=(10, 200, 10), format="JPEG")
    transparent = {"fill": (0, 0, 0, 0), "mode": "RGBA", "format": "WEBP", "lossless": True}
    write_image(folder / "img_4.webp", size=(30, 50), **transparent)
    out = tmp_path / "processed" / "dog"

    manifest = run(folder, out)

    sources = ["img_0.png", "img_1.png", "img_2.png", "img_3.JPG", "img_4.webp"]
    assert sorted(os.listdir(out)) == ["000.png", "001.png", "002.png", "003.png", "004.png", "manifest.json"]
    assert json.loads((out / "manifest.json").read_text(encoding="utf-8")) == manifest
    assert {k: v for k, v in manifest.items() if k != "images"} == {
        "name": "dog",
        "token": "<my-dog>",
        "class_word": "dog",
        "prompts": config["prompts"],
        "resolution": RES,
        "extra": {"description": "my dog Rex", "world": {"season": "summer", "tags": [1, 2]}},
    }
    assert [entry["source"] for entry in manifest["images"]] == sources
    for index, (entry, source) in enumerate(zip(manifest["images"], sources)):
        written = out / f"{index:03d}.png"
        assert entry["file"] == written.name
        assert entry["source_sha256"] == hashlib.sha256((folder / source).read_bytes()).hexdigest()
        assert entry["sha256"] == hashlib.sha256(written.read_bytes()).hexdigest()
        with Image.open(written) as png:
            assert (png.format, png.mode, png.size) == ("PNG", "RGB", (RES, RES))
    with Image.open(folder / "img_0.png") as source:
        expected_pixels = hashlib.sha256(source.convert("RGB").tobytes()).hexdigest()
    assert manifest["images"][0]["pixel_sha256"] == expected_pixels
    with Image.open(out / "004.png") as transparent:
        assert transparent.getpixel((16, 16)) == (255, 255, 255)


def test_prompts_default_to_null(tmp_path):
    manifest = run(make_concept(tmp_path))
    assert manifest["prompts"] is None
    assert manifest["extra"] == {}


def test_exif_orientation_is_applied(tmp_path):
    folder = make_concept(tmp_path, n_images=2)
    # Stored 40 wide x 20 high: left half red, right half blue. Orientation 6
    # means "rotate 90 degrees clockwise to display": upright it is 20x40 with
    # red on top and blue at the bottom.
    stored = Image.new("RGB", (40, 20), (255, 0, 0))
    stored.paste((0, 0, 255), (20, 0, 40, 20))
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    stored.save(folder / "rotated.jpg", format="JPEG", quality=95, exif=exif.tobytes())

    manifest = ingest_concept(folder, tmp_path / "out", resolution=RES, min_size=20)

    entry = next(e for e in manifest["images"] if e["source"] == "rotated.jpg")
    with Image.open(tmp_path / "out" / entry["file"]) as png:
        assert near(png.getpixel((4, 4)), (255, 0, 0)) and near(png.getpixel((28, 4)), (255, 0, 0))
        assert near(png.getpixel((4, 28)), (0, 0, 255)) and near(png.getpixel((28, 28)), (0, 0, 255))


def test_alpha_is_composited_on_white(tmp_path):
    folder = make_concept(tmp_path, n_images=2)
    rgba = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    rgba.paste((255, 0, 0, 255), (0, 0, 20, 40))
    rgba.save(folder / "rgba.png")
    palette = Image.new("P", (40, 40), 0)
    palette.putpalette([0, 0, 0, 0, 255, 0])
    palette.paste(1, (0, 0, 20, 40))
    palette.save(folder / "palette.png", transparency=0)

    manifest = run(folder)

    out = tmp_path / "processed" / "dog"
    by_source = {e["source"]: out / e["file"] for e in manifest["images"]}
    with Image.open(by_source["rgba.png"]) as png:
        assert png.mode == "RGB"
        assert png.getpixel((2, 16)) == (255, 0, 0)
        assert png.getpixel((29, 16)) == (255, 255, 255)
    with Image.open(by_source["palette.png"]) as png:
        assert png.getpixel((2, 16)) == (0, 255, 0)
        assert png.getpixel((29, 16)) == (255, 255, 255)


def test_non_square_image_is_centre_cropped(tmp_path):
    folder = make_concept(tmp_path, n_images=2)
    wide = Image.new("RGB", (80, 40), (0, 255, 0))
    wide.paste((255, 0, 0), (20, 0, 60, 40))
    wide.save(folder / "wide.png")

    manifest = run(folder)

    entry = next(e for e in manifest["images"] if e["source"] == "wide.png")
    with Image.open(tmp_path / "processed" / "dog" / entry["file"]) as png:
        colours = {png.getpixel((x, y)) for x in range(RES) for y in range(RES)}
    assert colours == {(255, 0, 0)}


def test_hidden_files_are_ignored(tmp_path):
    folder = make_concept(tmp_path)
    (folder / ".DS_Store").write_bytes(b"\x00junk")
    (folder / ".thumbs").mkdir()
    manifest = run(folder)
    assert len(manifest["images"]) == 3


def test_own_token_in_taken_tokens_is_not_a_conflict(tmp_path):
    manifest = run(make_concept(tmp_path), taken_tokens={"<my-dog>": "dog"})
    assert manifest["token"] == "<my-dog>"


def test_read_concept_yaml_returns_validated_fields(tmp_path):
    path = write_config(tmp_path, {**BASE_CONFIG, "prompts": ["{token} {class_word}"], "world": 2})
    assert read_concept_yaml(path) == {
        "token": "<my-dog>",
        "class_word": "dog",
        "prompts": ["{token} {class_word}"],
        "extra": {"world": 2},
    }


# --- concept folder and yaml errors -----------------------------------------


def test_missing_concept_folder(tmp_path):
    missing = tmp_path / "concepts" / "cat"
    message = single_problem(missing)
    assert str(missing) in message and "does not exist" in message and "create it" in message


def test_unsafe_folder_name(tmp_path):
    folder = make_concept(tmp_path, name="My Dog")
    message = single_problem(folder)
    assert str(folder) in message and "'My Dog'" in message and "rename the folder" in message


def test_missing_concept_yaml(tmp_path):
    folder = make_concept(tmp_path)
    (folder / "concept.yaml").unlink()
    message = single_problem(folder)
    assert str(folder / "concept.yaml") in message and "missing" in message and "create it" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("token: [unclosed\n", "cannot be read"),
        ("- token\n- class_word\n", "must be a mapping"),
        ("", "must be a mapping"),
        ("class_word: dog\n", "missing required key 'token'"),
        ("token: '<my-dog>'\n", "missing required key 'class_word'"),
    ],
)
def test_unreadable_or_incomplete_yaml(tmp_path, text, expected):
    folder = make_concept(tmp_path, config=text)
    message = single_problem(folder)
    assert str(folder / "concept.yaml") in message and expected in message and "fix:" in message


@pytest.mark.parametrize("token", ["<My-Dog>", "my-dog", "<my dog>", "<>", "<dog>\n", 7])
def test_bad_token(tmp_path, token):
    folder = make_concept(tmp_path, config={"token": token, "class_word": "dog"})
    message = single_problem(folder)
    assert str(folder / "concept.yaml") in message and repr(token) in message
    assert 'token: "<my-dog>"' in message


@pytest.mark.parametrize("class_word", ["dog2", "<dog>", "dog  house", "", 3, ["dog"]])
def test_bad_class_word(tmp_path, class_word):
    folder = make_concept(tmp_path, config={"token": "<my-dog>", "class_word": class_word})
    message = single_problem(folder)
    assert str(folder / "concept.yaml") in message and repr(class_word) in message
    assert "class_word: dog" in message


@pytest.mark.parametrize(
    ("token", "class_word"), [("<dog>", "dog"), ("<dog>", "Dog"), ("<golden-retriever>", "golden retriever")]
)
def test_token_equal_to_class_word(tmp_path, token, class_word):
    folder = make_concept(tmp_path, config={"token": token, "class_word": class_word})
    message = single_problem(folder)
    assert str(folder / "concept.yaml") in message and "is just the class word" in message
    assert "distinctive token" in message


@pytest.mark.parametrize(
    ("prompts", "expected"),
    [
        ("a photo of {token}", "non-empty list"),
        ([], "non-empty list"),
        (["a photo of a {class_word}"], "['class_word']"),
        (["{token} at {place}"], "['place', 'token']"),
        (["{token} in {}"], "['', 'token']"),
        (["a {{token}} sign"], "placeholders []"),
        (["{token} {"], "unbalanced braces"),
        ([3], "is not a string"),
    ],
)
def test_bad_prompts(tmp_path, prompts, expected):
    folder = make_concept(tmp_path, config={**BASE_CONFIG, "prompts": prompts})
    message = single_problem(folder)
    assert str(folder / "concept.yaml") in message and expected in message
    assert "{token}" in message.split("fix:")[1]


def test_every_bad_prompt_is_reported(tmp_path):
    folder = make_concept(tmp_path, config={**BASE_CONFIG, "prompts": ["ok {token}", "bad", "{x}"]})
    problems = problems_of(folder)
    assert [p.split(" ", 2)[1] for p in problems] == ["prompts[1]", "prompts[2]"]


def test_extra_value_that_json_cannot_hold(tmp_path):
    folder = make_concept(tmp_path, config=yaml.safe_dump(BASE_CONFIG) + "created: 2024-05-01\n")
    message = single_problem(folder)
    assert str(folder / "concept.yaml") in message and "'created' (date)" in message
    assert "quote it" in message


def test_taken_token_names_the_other_concept(tmp_path):
    folder = make_concept(tmp_path)
    message = single_problem(folder, taken_tokens={"<my-dog>": "rex", "<cat>": "tom"})
    assert str(folder / "concept.yaml") in message and "already used by concept 'rex'" in message
    assert "choose a token" in message


def test_read_concept_yaml_raises_with_all_problems(tmp_path):
    path = write_config(tmp_path, {"token": "dog", "class_word": "dog1", "prompts": ["x"]})
    with pytest.raises(ConceptDataError) as info:
        read_concept_yaml(path)
    assert len(info.value.problems) == 3
    assert all(p.startswith(f"{path}: ") for p in info.value.problems)
    assert str(info.value).startswith("3 problems:\n- ")


def test_token_equal_to_class_word_is_reported_alongside_prompt_problems(tmp_path):
    path = write_config(tmp_path, {"token": "<dog>", "class_word": "dog", "prompts": ["x"]})
    with pytest.raises(ConceptDataError) as info:
        read_concept_yaml(path)
    assert [p.split("; fix")[0].split(": ", 1)[1] for p in info.value.problems] == [
        "token '<dog>' is just the class word 'dog'",
        "prompts[0] 'x' has placeholders []",
    ]


# --- image errors -----------------------------------------------------------


@pytest.mark.parametrize("name", ["notes.txt", "clip.mp4", "concept.yml", "img.gif"])
def test_stray_file(tmp_path, name):
    folder = make_concept(tmp_path)
    (folder / name).write_bytes(b"x")
    message = single_problem(folder)
    assert str(folder / name) in message and "remove or move it" in message


def test_subfolder_is_a_stray_entry(tmp_path):
    folder = make_concept(tmp_path)
    (folder / "more").mkdir()
    message = single_problem(folder)
    assert str(folder / "more") in message and "remove or move it" in message


def test_corrupt_image(tmp_path):
    folder = make_concept(tmp_path)
    (folder / "broken.png").write_bytes(b"not an image at all")
    message = single_problem(folder)
    assert str(folder / "broken.png") in message and "cannot be decoded" in message
    assert "re-download" in message


def test_truncated_image(tmp_path):
    folder = make_concept(tmp_path)
    full = tmp_path / "full.jpg"
    Image.effect_noise((200, 200), 60).convert("RGB").save(full, quality=95)
    (folder / "cut.jpg").write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    message = single_problem(folder)
    assert str(folder / "cut.jpg") in message and "cannot be decoded" in message


def test_too_small_image_after_exif_rotation(tmp_path):
    folder = make_concept(tmp_path)
    exif = Image.Exif()
    exif[ORIENTATION] = 8
    write_image(folder / "tiny.jpg", size=(60, 20), format="JPEG", exif=exif.tobytes())
    message = single_problem(folder)
    assert str(folder / "tiny.jpg") in message and "20x60 px is too small" in message
    assert f"at least {MIN_SIZE} px" in message and "higher-resolution" in message


def test_duplicate_pixels_in_different_formats(tmp_path):
    folder = make_concept(tmp_path)
    write_image(folder / "copy.bmp", fill=colour(1), format="BMP")
    message = single_problem(folder)
    assert message.startswith(f"{folder / 'img_1.png'}: same pixels as {folder / 'copy.bmp'}")
    assert "remove one of the two" in message


def test_exif_rotated_copy_is_a_duplicate(tmp_path):
    folder = make_concept(tmp_path)
    upright = Image.new("RGB", (40, 48), (0, 0, 0))
    upright.paste((255, 255, 255), (0, 0, 40, 10))
    upright.save(folder / "a_upright.png")
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    upright.transpose(Image.Transpose.ROTATE_90).save(folder / "b_rotated.png", exif=exif.tobytes())
    message = single_problem(folder)
    assert str(folder / "b_rotated.png") in message and str(folder / "a_upright.png") in message


def test_same_pixel_bytes_in_another_shape_is_not_a_duplicate(tmp_path):
    folder = make_concept(tmp_path, n_images=2)
    write_image(folder / "tall.png", size=(40, 48), fill=colour(0))
    assert len(run(folder)["images"]) == 3


@pytest.mark.parametrize(
    ("n_images", "expected"),
    [(2, "has 2 image(s) but needs at least 3"), (11, "has 11 images but at most 10")],
)
def test_image_count_limits(tmp_path, n_images, expected):
    folder = make_concept(tmp_path, n_images=n_images)
    message = single_problem(folder)
    assert message.startswith(f"{folder}: {expected}")
    assert "fix: add more photos" in message or "move the rest out" in message


def test_custom_image_count_limits(tmp_path):
    folder = make_concept(tmp_path, n_images=2)
    assert len(run(folder, min_images=1, max_images=2)["images"]) == 2
    assert "at most 1 are allowed" in single_problem(folder, min_images=1, max_images=1)


def test_all_problems_are_reported_at_once(tmp_path):
    folder = make_concept(tmp_path, name="Bad Name", n_images=1, config={"token": "<x>", "class_word": "x"})
    (folder / "notes.txt").write_text("hi")
    (folder / "broken.jpg").write_bytes(b"garbage")
    with pytest.raises(ConceptDataError) as info:
        run(folder)
    problems = info.value.problems
    assert len(problems) == 5
    for fragment in ["'Bad Name'", "is just the class word", "notes.txt", "broken.jpg", "has 2 image(s)"]:
        assert sum(fragment in p for p in problems) == 1, fragment
    assert str(info.value).splitlines()[0] == "5 problems:"


# --- atomicity ----------------------------------------------------------------


def test_failed_reingest_leaves_previous_output_byte_identical(tmp_path):
    folder = make_concept(tmp_path)
    out = tmp_path / "processed" / "dog"
    run(folder, out)
    before = snapshot(out)
    (folder / "broken.png").write_bytes(b"garbage")

    with pytest.raises(ConceptDataError):
        run(folder, out)

    assert snapshot(out) == before
    assert os.listdir(out.parent) == ["dog"]


def test_failure_while_writing_leaves_previous_output_and_no_temp_folder(tmp_path, monkeypatch):
    folder = make_concept(tmp_path)
    out = tmp_path / "processed" / "dog"
    run(folder, out)
    before = snapshot(out)
    write_image(folder / "img_9.png", fill=(1, 2, 3))
    real_write_png = ingest._write_png

    def failing_write_png(tmp, index, image):
        if index == 2:
            raise OSError("disk full")
        return real_write_png(tmp, index, image)

    monkeypatch.setattr(ingest, "_write_png", failing_write_png)
    with pytest.raises(OSError, match="disk full"):
        run(folder, out)

    assert snapshot(out) == before
    assert os.listdir(out.parent) == ["dog"]


def test_failed_first_ingest_creates_nothing(tmp_path):
    folder = make_concept(tmp_path, n_images=1)
    with pytest.raises(ConceptDataError):
        run(folder)
    assert not (tmp_path / "processed").exists()


def test_successful_reingest_replaces_old_output(tmp_path):
    folder = make_concept(tmp_path, n_images=4)
    out = tmp_path / "processed" / "dog"
    run(folder, out)
    (folder / "img_3.png").unlink()
    manifest = run(folder, out)
    assert sorted(os.listdir(out)) == ["000.png", "001.png", "002.png", "manifest.json"]
    assert len(manifest["images"]) == 3
    assert os.listdir(out.parent) == ["dog"]


def test_out_dir_overlapping_concept_dir_is_refused(tmp_path):
    folder = make_concept(tmp_path)
    before = snapshot(folder)
    for out in [folder, folder / "processed", folder.parent, folder / ".." / "dog"]:
        with pytest.raises(ValueError, match="must not overlap"):
            run(folder, out)
    assert snapshot(folder) == before


# --- fileio -------------------------------------------------------------------


def test_sha256_file(tmp_path):
    path = tmp_path / "blob"
    data = os.urandom(3 * (1 << 20) + 5)
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_replace_dir_atomically_creates_and_replaces(tmp_path):
    final = tmp_path / "final"
    for content in ["first", "second"]:
        tmp = tmp_path / f".final.tmp-{content}"
        tmp.mkdir()
        (tmp / "data.txt").write_text(content)
        replace_dir_atomically(tmp, final)
        assert (final / "data.txt").read_text() == content
    assert sorted(os.listdir(tmp_path)) == ["final"]


def test_replace_dir_atomically_restores_old_dir_when_move_fails(tmp_path, monkeypatch):
    final, tmp = tmp_path / "final", tmp_path / "new"
    final.mkdir()
    (final / "data.txt").write_text("old")
    tmp.mkdir()
    real_rename = os.rename

    def rename(src, dst):
        if Path(src) == tmp:
            raise OSError("rename failed")
        real_rename(src, dst)

    monkeypatch.setattr(fileio.os, "rename", rename)
    with pytest.raises(OSError, match="rename failed"):
        replace_dir_atomically(tmp, final)
    assert (final / "data.txt").read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["final", "new"]


def test_atomic_dir_removes_temp_folder_on_error(tmp_path):
    final = tmp_path / "deep" / "final"
    with pytest.raises(RuntimeError):
        with atomic_dir(final) as tmp:
            (tmp / "partial").write_text("x")
            raise RuntimeError("boom")
    assert os.listdir(final.parent) == []
    with atomic_dir(final) as tmp:
        assert tmp.parent == final.parent and tmp.name.startswith(".final.tmp-")
        (tmp / "done").write_text("y")
    assert os.listdir(final.parent) == ["final"] and (final / "done").read_text() == "y"


def test_16_bit_greyscale_png_keeps_its_tones(tmp_path):
    """Pillow's convert("RGB") clips 16-bit values at 255: a mid-grey 16-bit PNG used to be
    ingested as all white."""
    folder = make_concept(tmp_path, n_images=3)
    ramp = np.linspace(0, 65535, 48 * 40).reshape(40, 48).astype(np.uint16)
    Image.fromarray(ramp).save(folder / "img_0.png")  # mode I;16
    Image.new("I;16", (48, 40), 32768).save(folder / "img_1.png")  # mid grey
    manifest = run(folder)
    out = tmp_path / "processed" / "dog"
    files = {item["source"]: item["file"] for item in manifest["images"]}
    grey = np.asarray(Image.open(out / files["img_1.png"]))
    assert np.all(np.abs(grey.astype(int) - 128) <= 1)
    tones = np.asarray(Image.open(out / files["img_0.png"]).convert("L"))
    assert tones.min() < 40 and tones.max() > 215  # the ramp, not a white sheet
