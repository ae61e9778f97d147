from litegen.train.main import main

main()
