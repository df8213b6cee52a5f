from mamba_backends.cli import main

raise SystemExit(main())
