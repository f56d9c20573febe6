from billing_manager.server import main

main()
