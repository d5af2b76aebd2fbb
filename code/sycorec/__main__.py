from sycorec.entry import main

main()
