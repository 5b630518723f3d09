"""Rebuilding a whole ``chat.completion`` from the ``chat.completion.chunk`` events of a stream.

The proxy feeds every chunk it passes to the client; at the end :meth:`result` gives the same
object a non-streamed request would have returned (content, tool calls merged by index,
reasoning content, refusal, finish reason, usage), which is what the caches store.
"""

from __future__ import annotations

from typing import Any, Final

_HEAD: Final = ("id", "created", "model", "system_fingerprint")


class StreamAssembler:
    """Accumulates OpenAI chat chunks into one ``chat.completion`` object."""

    __slots__ = ("_choices", "_head", "_open", "usage")

    def __init__(self) -> None:
        self._head: dict[str, Any] = {}
        self._open = True  # some field of the head is still unset or empty
        self._choices: dict[int, dict[str, Any]] = {}
        self.usage: dict[str, Any] | None = None

    def feed(self, chunk: dict[str, Any]) -> None:
        """Add one parsed chunk."""
        if self._open:
            self._fill_head(chunk)
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            self._add_choice(choice)

    def _fill_head(self, chunk: dict[str, Any]) -> None:
        # Each field from the first chunk where it is set: Azure opens with a
        # prompt_filter_results chunk whose id and model are "" and created is 0. A field no
        # chunk sets keeps its first value, empty or not.
        head = self._head
        for key in _HEAD:
            if not head.get(key) and key in chunk:
                value = chunk[key]
                if value or key not in head:
                    head[key] = value
        self._open = not all(head.get(key) for key in _HEAD)

    def _add_choice(self, choice: dict[str, Any]) -> None:
        index = choice.get("index", 0)
        acc = self._choices.get(index)
        if acc is None:
            acc = self._choices[index] = {"index": index, "role": "assistant", "parts": {}}
        delta = choice.get("delta") or {}
        for key in ("content", "reasoning_content", "refusal"):
            piece = delta.get(key)
            if piece:
                acc["parts"].setdefault(key, []).append(piece)
        for call in delta.get("tool_calls") or ():
            slot = acc.setdefault("tool_calls", {}).setdefault(
                call.get("index", 0),
                {"type": "function", "function": {"name": "", "arguments": ""}},
            )
            if call.get("id"):
                slot["id"] = call["id"]
            fn = call.get("function") or {}
            slot["function"]["name"] += fn.get("name") or ""
            slot["function"]["arguments"] += fn.get("arguments") or ""
        if choice.get("finish_reason"):
            acc["finish_reason"] = choice["finish_reason"]

    @property
    def finished(self) -> bool:
        """Whether every choice seen has a finish reason."""
        return bool(self._choices) and all("finish_reason" in c for c in self._choices.values())

    def result(self) -> dict[str, Any]:
        """The assembled ``chat.completion`` object."""
        choices = []
        for index in sorted(self._choices):
            acc = self._choices[index]
            parts = acc["parts"]
            message: dict[str, Any] = {
                "role": "assistant",
                "content": "".join(parts["content"]) if "content" in parts else None,
            }
            if "reasoning_content" in parts:
                message["reasoning_content"] = "".join(parts["reasoning_content"])
            message["refusal"] = "".join(parts["refusal"]) if "refusal" in parts else None
            if "tool_calls" in acc:
                message["tool_calls"] = [acc["tool_calls"][i] for i in sorted(acc["tool_calls"])]
            choices.append(
                {"index": index, "message": message, "finish_reason": acc.get("finish_reason")}
            )
        out = {"object": "chat.completion", **self._head, "choices": choices}
        if self.usage is not None:
            out["usage"] = self.usage
        return out
