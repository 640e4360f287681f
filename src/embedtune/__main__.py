from embedtune.launch import main

raise SystemExit(main())
