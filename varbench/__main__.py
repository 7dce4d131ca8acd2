"""``python -m varbench`` == the ``varbench`` console script."""
from varbench.cli import main

if __name__ == "__main__":
    main()
