from embedtune.cli import main

raise SystemExit(main())
