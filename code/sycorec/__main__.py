from sycorec.cli import main

main()
