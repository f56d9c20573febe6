from rating_service.server import main

main()
