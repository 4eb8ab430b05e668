from jaxseg.main import main

main()
