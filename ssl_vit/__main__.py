"""`python -m ssl_vit …` (and `accelerate launch -m ssl_vit …`) is the `ssl-vit` command."""
from .cli import main

raise SystemExit(main())
