"""The sandboxed renderer and the built-in templates."""

from __future__ import annotations

import datetime

import pytest

from notifier.templates.builtin import GENERIC, builtin_templates
from notifier.templates.messages import TemplateProblem, TemplateSource
from notifier.templates.rendering import Renderer, format_date, template_context

UTC = datetime.UTC
COMMON_EVENT_TYPES = {
    "user.signup",
    "payment.succeeded",
    "payment.failed",
    "order.created",
    "shipment.delivered",
    "inventory.low",
    "password.expiring",
    "subscription.renewal",
}


def source(subject: str = "s", text: str = "t", html: str | None = None) -> TemplateSource:
    return TemplateSource(name="test", subject=subject, text_body=text, html_body=html)


def context(payload: dict[str, object] | None = None, **fields: object) -> dict[str, object]:
    options: dict[str, object] = {
        "notification_type": "password.expiring",
        "recipient": "ada@example.com",
    } | fields
    return template_context(payload or {}, **options)  # type: ignore[arg-type]


def test_html_is_escaped_and_text_is_not() -> None:
    rendered = Renderer().render(
        source("Hi {{ name }}", "Hi {{ name }}", "<p>Hi {{ name }}</p>"),
        context({"name": "<Ada & Co>"}),
    )

    assert rendered.subject == "Hi <Ada & Co>"
    assert rendered.text == "Hi <Ada & Co>"
    assert rendered.html == "<p>Hi &lt;Ada &amp; Co&gt;</p>"


def test_an_undefined_variable_is_an_error_naming_part_and_line() -> None:
    with pytest.raises(TemplateProblem) as problem:
        Renderer().render(source(html="<p>\n{{ nmae }}</p>"), context({"name": "Ada"}))

    assert problem.value.part == "html_body"
    assert problem.value.line == 2
    assert "'nmae' is undefined" in str(problem.value)


def test_a_syntax_error_names_part_and_line() -> None:
    with pytest.raises(TemplateProblem) as problem:
        Renderer().check(source(text="line one\n{% if name %}unclosed"))

    assert problem.value.part == "text_body"
    assert problem.value.line == 2


@pytest.mark.parametrize(
    "body",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ name.__class__.__init__.__globals__ }}",
        "{{ cycler.__init__.__globals__.os }}",
        "{% for i in range(10**9) %}{% endfor %}",
    ],
)
def test_the_sandbox_refuses_unsafe_templates(body: str) -> None:
    with pytest.raises(TemplateProblem):
        Renderer().render(source(text=body), context({"name": "Ada"}))


def test_date_filters_read_iso_strings_and_datetimes() -> None:
    rendered = Renderer().render(
        source(
            "{{ expires_at | date }}",
            "{{ target_date | date('%Y-%m-%d') }} {{ expires_at | datetime }}",
        ),
        context(
            {"expires_at": "2026-12-24T10:00:00+01:00"},
            target_date=datetime.datetime(2027, 1, 2, tzinfo=UTC),
        ),
    )

    assert rendered.subject == "24 December 2026"
    assert rendered.text == "2027-01-02 24 December 2026, 09:00 UTC"
    with pytest.raises(ValueError, match="not an ISO 8601"):
        format_date("next tuesday")


def test_a_bad_date_in_the_payload_is_a_template_problem() -> None:
    with pytest.raises(TemplateProblem, match="not an ISO 8601"):
        Renderer().render(source(text="{{ when | date }}"), context({"when": "soon"}))


def test_notification_fields_win_over_payload_fields_and_both_stay_reachable() -> None:
    rendered = Renderer().render(
        source(text="{{ recipient }} {{ payload.recipient }} {{ notification.lead_time_days }}"),
        context({"recipient": "spoofed"}, lead_time=datetime.timedelta(days=7)),
    )

    assert rendered.text == "ada@example.com spoofed 7"


def test_the_subject_is_one_line() -> None:
    rendered = Renderer().render(source(subject="Hello\r\n  Bcc: eve@example.com\n"), context())

    assert rendered.subject == "Hello Bcc: eve@example.com"


def test_there_is_a_builtin_for_every_common_event_type() -> None:
    assert set(builtin_templates()) == COMMON_EVENT_TYPES | {GENERIC}


@pytest.mark.parametrize("name", sorted(COMMON_EVENT_TYPES | {GENERIC}))
def test_builtins_render_with_an_empty_payload(name: str) -> None:
    rendered = Renderer().render(builtin_templates()[name], context(notification_type=name))

    assert rendered.subject.strip()
    assert rendered.text.strip()
    assert rendered.html is not None
    assert rendered.html.strip().startswith("<p>")


def test_password_expiring_builtin_uses_the_name_and_the_target_date() -> None:
    rendered = Renderer().render(
        builtin_templates()["password.expiring"],
        context(
            {"name": "Ada <admin>"}, target_date=datetime.datetime(2026, 12, 24, 9, tzinfo=UTC)
        ),
    )

    assert rendered.subject == "Your password expires on 24 December 2026"
    assert rendered.text.startswith("Hi Ada <admin>,")
    assert rendered.html is not None
    assert "Ada &lt;admin&gt;" in rendered.html
    assert "<strong>24 December 2026</strong>" in rendered.html


def test_builtins_greet_the_name_or_the_users_name() -> None:
    template = builtin_templates()["payment.failed"]

    assert Renderer().render(template, context({"name": "Ada"})).text.startswith("Hi Ada,")
    nested = context({"user": {"name": "Grace"}})
    assert Renderer().render(template, nested).text.startswith("Hi Grace,")
    assert Renderer().render(template, context({"user": "u-1"})).text.startswith("Hi there,")
