"""The chat template: the chat_template option's, else the GGUF's, else ChatML; and a chat rendered with
it by llama-cpp-python's Jinja2 formatter."""

from __future__ import annotations

from typing import Any, cast

from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from localfleet.errors import BadInput
from localfleet.llm.chat import check_roles
from localfleet.llm.chat_output import Family, family_of

#: llama.cpp's own fallback when a GGUF carries no chat template: ChatML, here with Qwen2.5's tool block
#: so that tools still reach such a model (and its `<tool_call>` output is parsed).
CHATML_TEMPLATE = (
    "{% if tools %}<|im_start|>system\n"
    "{% if messages[0].role == 'system' %}{{ messages[0].content }}\n\n{% endif %}"
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
    "{% for tool in tools %}\n{{ tool | tojson }}{% endfor %}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": '
    "<args-json-object>}\n</tool_call><|im_end|>\n"
    "{% elif messages[0].role == 'system' %}<|im_start|>system\n{{ messages[0].content }}<|im_end|>\n"
    "{% endif %}"
    "{% for message in messages %}"
    "{% if message.role == 'system' and loop.first %}"
    "{% elif message.role == 'assistant' and message.tool_calls %}<|im_start|>assistant\n"
    "{% if message.content %}{{ message.content }}\n{% endif %}"
    "{% for call in message.tool_calls %}{% set fn = call.function if call.function else call %}"
    '<tool_call>\n{"name": "{{ fn.name }}", "arguments": '
    "{{ fn.arguments if fn.arguments is string else fn.arguments | tojson }}}\n</tool_call>"
    "{% endfor %}<|im_end|>\n"
    "{% elif message.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ message.content }}\n"
    "</tool_response><|im_end|>\n"
    "{% else %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CHATML_STOP = "<|im_end|>"

#: what the formatter passes itself: template variables from Metadata never replace it
_RESERVED = frozenset(
    {"messages", "tools", "tool_choice", "functions", "function_call", "add_generation_prompt"}
)


class Template:
    """The template a model renders chats with, and the tool-call family its output is read as."""

    def __init__(self, option: str, gguf: str, *, bos: str, eos: str) -> None:
        if option:
            self.text, self.source = option, "chat_template option"
        elif gguf:
            self.text, self.source = gguf, "GGUF template"
        else:
            self.text, self.source = CHATML_TEMPLATE, "ChatML fallback (the GGUF has none)"
        self.fallback = not option and not gguf
        self.family: Family = family_of(self.text)
        self._formatter = Jinja2ChatFormatter(template=self.text, eos_token=eos, bos_token=bos)

    @property
    def stop(self) -> tuple[str, ...]:
        """Stop strings the template implies: ChatML's end of turn, which the model may not end on."""
        return (CHATML_STOP,) if self.fallback else ()

    def render(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[Any] | None = None,
        tool_choice: Any = None,
        variables: dict[str, Any] | None = None,
    ) -> str:
        """The chat rendered with the model's template, ending with the assistant's turn opened."""
        check_roles(messages)
        extra = {k: v for k, v in (variables or {}).items() if k not in _RESERVED}
        try:
            rendered = self._formatter(
                messages=cast(Any, messages), tools=tools, tool_choice=tool_choice, **extra
            )
        except Exception as exc:  # jinja errors and the template's own raise_exception
            raise BadInput(f"the model's chat template rejected these Messages: {exc}") from None
        return rendered.prompt
