"""The procedural world: deterministic, labelled, captions consistent with images."""

import numpy as np

from hirm.minicanvas import world


def test_render_batch_is_deterministic_per_seed():
    a, b, c = world.render_batch(16, seed=3), world.render_batch(16, seed=3), world.render_batch(16, seed=4)
    assert np.array_equal(a.images, b.images) and a.captions == b.captions
    assert not np.array_equal(a.images, c.images)
    assert a.images.shape == (16, world.IMAGE_SIZE, world.IMAGE_SIZE, 3) and a.images.dtype == np.uint8


def test_pinned_labels_and_world_size():
    assert len(world.OBJECTS) >= 12 and len(world.STYLES) >= 10
    b = world.render_batch(8, seed=0, object=world.OBJECTS.index("star"), style=world.STYLES.index("mosaic"))
    assert set(b.objects) == {world.OBJECTS.index("star")} and set(b.styles) == {world.STYLES.index("mosaic")}


def test_captions_name_what_they_mention():
    b = world.render_batch(400, seed=1)
    names = {o: (o, *world.OBJECT_SYNONYMS[o], world.OBJECT_GROUPS[o]) for o in world.OBJECTS}
    for cap, mentioned, obj, sample in zip(b.captions, b.mentioned, b.objects, b.samples, strict=True):
        if "object" in mentioned or "group" in mentioned:
            assert any(n in cap for n in names[world.OBJECTS[obj]])
        if "colour" in mentioned:
            assert sample.colour in cap
    labels = b.labels()
    assert set(labels) >= {"object", "style", "colour", "background", "size", "group"}


def test_every_concept_has_a_synonym_and_a_supercategory():
    for o in world.OBJECTS:
        assert world.OBJECT_SYNONYMS[o] and world.supercategory(o) in ("a polygon", "a curved shape")
    for s in world.STYLES:
        assert world.STYLE_SYNONYMS[s] and world.supercategory(s) == "a pattern"


def test_styles_differ_visibly():
    """Same shape and attributes under each style: every pair of styles gives clearly different pixels."""
    imgs = []
    for s in range(len(world.STYLES)):
        rng = np.random.default_rng(0)
        sample = world.Sample(object=0, style=s, colour="red", background="white", size="big")
        imgs.append(world.draw(sample, rng))
    for i in range(len(imgs)):
        for j in range(i + 1, len(imgs)):
            assert np.abs(imgs[i] - imgs[j]).mean() > 0.02, (world.STYLES[i], world.STYLES[j])


def test_render_batches_over_processes_equal_one_process():
    specs = [(5, 11), (3, 12), (4, 13)]
    one = list(world.render_batches(specs, workers=1))
    two = list(world.render_batches(specs, workers=2))
    assert [len(b.captions) for b in two] == [5, 3, 4]
    for a, b in zip(one, two, strict=True):
        assert np.array_equal(a.images, b.images) and a.captions == b.captions
