"""The ``tsode`` console script (and ``python -m tsode``).

``tsode quickstart ...`` runs :mod:`tsode.quickstart`; anything else is the LightningCLI of
:mod:`tsode.cli` (``fit`` / ``validate`` / ``test`` / ``predict``). Dispatching here keeps
the layering one way: the quickstart builds on the CLI, the CLI knows nothing of it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tsode`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "quickstart":
        from tsode.cli import limit_threads
        from tsode.quickstart import QuickstartError, run_quickstart

        limit_threads()
        try:
            return run_quickstart(args[1:])
        except QuickstartError as error:
            sys.stderr.write(f"{error}\n")
            return 1
    from tsode.cli import main as cli_main

    return cli_main(args)


if __name__ == "__main__":
    sys.exit(main())
