"""The ``titan-bus`` command-line interface (Typer and Rich).

One module per command: :mod:`~titan_bus.cli.run`,
:mod:`~titan_bus.cli.publish`, :mod:`~titan_bus.cli.streams`,
:mod:`~titan_bus.cli.tail`, :mod:`~titan_bus.cli.config_check`; shared options
and error output in :mod:`~titan_bus.cli.common`, log set-up in
:mod:`~titan_bus.cli.logs`. The root app is :data:`titan_bus.cli.main.app`.
"""
