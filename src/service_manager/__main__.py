from service_manager.server import main

main()
