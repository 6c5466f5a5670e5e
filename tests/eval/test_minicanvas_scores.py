"""UA / IRA / CRA as UnlearnCanvas defines them, checked on hand-made predictions."""

import numpy as np
import pytest

from hirm.eval.minicanvas import Grid, judged_as, score
from hirm.minicanvas import world

N_OBJ, N_STY = len(world.OBJECTS), len(world.STYLES)


def make_grid(pred_obj, pred_sty):
    objs = np.repeat(np.arange(N_OBJ), N_STY)
    stys = np.tile(np.arange(N_STY), N_OBJ)
    n = N_OBJ * N_STY
    return Grid([None] * n, objs, stys, pred_obj(objs, stys), pred_sty(objs, stys), [""] * n, 1.0)


def test_perfect_model_has_zero_ua_full_retention():
    g = make_grid(lambda o, s: o.copy(), lambda o, s: s.copy())
    r = score(g, "star")
    assert (r["ua"], r["ira"], r["cra"]) == (0.0, 1.0, 1.0)


def test_object_erasure():
    star = world.OBJECTS.index("star")
    # star images become circles and lose their style; one other object's images are wrong half the time
    def po(o, s):
        p = o.copy()
        p[o == star] = 0
        p[(o == 1) & (s < N_STY // 2)] = 2
        return p

    def ps(o, s):
        p = s.copy()
        p[o == star] = (s[o == star] + 1) % N_STY
        return p

    r = score(make_grid(po, ps), "star")
    assert r["ua"] == 1.0
    assert r["ira"] == pytest.approx(1 - (N_STY // 2) / ((N_OBJ - 1) * N_STY))
    assert r["cra"] == 1.0  # the target's own images do not count against cross-domain retention


def test_style_erasure_swaps_roles():
    mosaic = world.STYLES.index("mosaic")
    grid = make_grid(lambda o, s: np.where(s == mosaic, (o + 1) % N_OBJ, o), lambda o, s: np.where(s == mosaic, 0, s))
    r = score(grid, "mosaic")
    assert r["ua"] == 1.0 and r["ira"] == 1.0 and r["cra"] == 1.0
    assert r["domain"] == "style"


def test_unknown_concept_is_clear_error():
    import hirm

    g = make_grid(lambda o, s: o, lambda o, s: s)
    with pytest.raises(hirm.HirmError, match="not a MiniCanvas concept"):
        score(g, "teapot")


def test_several_erased_concepts_scored_apart_from_what_was_left_alone():
    from hirm.eval.minicanvas import score_concepts

    star, striped = world.OBJECTS.index("star"), world.STYLES.index("striped")

    def po(o, s):  # stars erased; on striped cells every object is also wrong (must not count as "kept")
        p = o.copy()
        p[(o == star) | (s == striped)] = (o[(o == star) | (s == striped)] + 1) % N_OBJ
        return p

    def ps(o, s):  # striped erased
        p = s.copy()
        p[s == striped] = (striped + 1) % N_STY
        return p

    r = score_concepts(make_grid(po, ps), ["star", "striped"])
    assert r["ua_per_concept"] == {"star": 1.0, "striped": 1.0} and r["ua"] == 1.0
    assert "star" not in r["kept_per_concept"] and "striped" not in r["kept_per_concept"]
    assert r["kept_acc"] == 1.0 and len(r["kept_per_concept"]) == N_OBJ + N_STY - 2


class _FakeClassifier:
    """Calls everything "circle" / "striped"."""

    def predict(self, batch):
        import torch

        n = batch.shape[0]
        return {"object": torch.zeros(n, dtype=torch.long), "style": torch.zeros(n, dtype=torch.long)}


def test_unnamed_ua_draws_the_concept_cells_without_its_word(monkeypatch):
    from PIL import Image

    from hirm.eval import minicanvas as mc

    calls = []

    def fake_sample(pipe, prompts, seeds, **kw):
        calls.append((list(prompts), list(seeds)))
        return [Image.new("RGB", (8, 8))] * len(prompts)

    monkeypatch.setattr(mc, "sample", fake_sample)
    grid = mc.generate_grid(None, _FakeClassifier(), seeds=(0, 1))
    assert len(set(calls[0][1])) == len(grid.prompts) == N_OBJ * N_STY * 2

    ua = mc.unnamed_ua(None, _FakeClassifier(), "heart", seeds=(0, 1))
    prompts, seeds = calls[1]
    assert len(prompts) == N_STY * 2 and not any("heart" in p for p in prompts)
    assert prompts[0] == "a image in striped style"
    # the same image seeds as the heart cells of the full grid
    heart = [s for p, s in zip(grid.prompts, calls[0][1], strict=True) if p.startswith("a heart image")]
    assert seeds == heart
    assert ua == 1.0  # every unnamed image called "circle": none is a heart

    assert mc.unnamed_ua(None, _FakeClassifier(), "circle", seeds=(0,)) == 0.0
    prompts, _ = calls[2]
    assert prompts[0] == "a image in striped style" and len(prompts) == N_STY
    mc.unnamed_ua(None, _FakeClassifier(), "watercolor", seeds=(0,))
    assert calls[3][0][0] == "a circle image in style" and len(calls[3][0]) == N_OBJ


def test_judged_as_is_the_concepts_confusion_row():
    star, circle = world.OBJECTS.index("star"), world.OBJECTS.index("circle")
    # half of star's cells drawn as circles, the rest still stars; other objects' cells do not count
    g = make_grid(lambda o, s: np.where((o == star) & (s % 2 == 0), circle, np.where(o == star, star, 0)),
                  lambda o, s: s)
    assert judged_as(g, "star") == {"circle": (N_STY + 1) // 2, "star": N_STY // 2}
    assert judged_as(g, "mosaic") == {"mosaic": N_OBJ}
