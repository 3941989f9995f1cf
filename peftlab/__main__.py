"""``python -m peftlab``: the CLI (``peftlab.cli``)."""

from peftlab.cli import main

if __name__ == "__main__":
    main()
