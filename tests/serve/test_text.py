from bitstack.serve.text import REPLACEMENT, TextStream, find_stop, stop_prefix_length


def decoder(pieces):
    return lambda ids: "".join(pieces[i] for i in ids)


def test_stop_prefix_length_and_find_stop():
    assert stop_prefix_length("hello wor", ("world",)) == 3
    assert stop_prefix_length("hello", ("world",)) == 0
    assert stop_prefix_length("ab", ("abc", "bx")) == 2
    assert find_stop("one two three", ("three", "two"), 0) == 4
    assert find_stop("one two", ("x",), 0) == -1


def test_stream_pieces_add_up_and_stop_string_is_cut():
    pieces = ["He", "llo", " wo", "rld", "!", " more"]
    stream = TextStream(decoder(pieces), stops=("world",))
    out = []
    for token in range(len(pieces)):
        stopped = stream.add(token)
        out.append(stream.release(final=stopped))
        if stopped:
            break
    assert out == ["He", "llo", " ", ""]  # "wo" (the beginning of "world") was held back, then cut
    assert stream.text == "Hello " and stream.stopped


def test_stop_string_spanning_tokens_and_none_reached():
    stream = TextStream(decoder(["a", "b<", "/", "s>", "c"]), stops=("</s>",))
    assert [stream.add(t) for t in range(4)] == [False, False, False, True]
    assert stream.release(final=True) == "ab"
    plain = TextStream(decoder(["x", "y"]), stops=("zz",))
    plain.add(0), plain.add(1)
    assert plain.release() + plain.release(final=True) == "xy"


def test_incomplete_characters_are_held_back():
    texts = {(0,): "caf", (0, 1): "caf" + REPLACEMENT, (0, 1, 2): "café"}
    stream = TextStream(lambda ids: texts[tuple(ids)])
    stream.add(0)
    assert stream.release() == "caf"
    stream.add(1)
    assert stream.release() == ""
    stream.add(2)
    assert stream.release() == "é"
