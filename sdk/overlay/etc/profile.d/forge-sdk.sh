export PS1='(forge-sdk) \w \$ '
