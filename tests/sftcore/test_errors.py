"""sftcore.errors.one_line: what any command prints or stores of a foreign exception."""

from __future__ import annotations

from sftcore.errors import one_line

CANARY = "hf_CANARYerrors0123456789abcdefXYZ"


def test_one_line_is_the_first_plain_line_with_secrets_masked(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "wandb-secret-value")
    exc = RuntimeError("\n<sky-payload>{\"spinner\": 1}</sky-payload>\x1b[31mHTTP 401 for "
                       f"https://x/?token={CANARY} key wandb-secret-value\x1b[0m\nTraceback (most recent call last):\n  ...")
    line = one_line(exc)
    assert line == "HTTP 401 for https://x/?token=**** key ****", line
    assert one_line(exc, with_type=True).startswith("RuntimeError: HTTP 401")


def test_one_line_without_a_message_names_the_exception_and_can_be_bounded():
    assert one_line(KeyError()) == "KeyError"
    assert one_line(KeyError(), with_type=True) == "KeyError"
    long = one_line(ValueError("x" * 500), limit=200)
    assert len(long) == 200 and long.endswith("...")
