from fedcmd_plugin.cli import main

raise SystemExit(main())
