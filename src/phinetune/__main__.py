from phinetune.cli import main

main()
