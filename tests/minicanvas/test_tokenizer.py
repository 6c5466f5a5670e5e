from hirm.minicanvas.tokenizer import load_tokenizer


def test_shipped_tokenizer_matches_openai_clip_ids():
    tok = load_tokenizer()
    assert len(tok) == 49408 and tok.model_max_length == 77
    # ids from OpenAI's CLIP tokenizer: <|startoftext|> a photo of a cat <|endoftext|>
    assert tok("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]
    ids = tok("x", padding="max_length", max_length=77)["input_ids"]
    assert len(ids) == 77 and ids[-1] == 49407
