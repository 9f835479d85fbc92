"""``torchrun --nproc_per_node=K -m dprune.train --out RUN ...`` (same options as ``dprune train``)."""
import sys

import click

from ..store import StoreError
from .cli import train_cmd


def main() -> int:
    try:
        train_cmd.main(prog_name="python -m dprune.train", standalone_mode=False)
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except (ValueError, StoreError) as e:
        click.echo(f"Error: {e}", err=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
