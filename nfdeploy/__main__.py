from nfdeploy.cli import main

main()
